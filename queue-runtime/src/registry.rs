//! The tasks of the program, gathered at start-up from every `#[task]`.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;

use queue_core::{TaskError, TaskOptions};

use crate::context::TaskContext;
use crate::error::{Error, Result};

/// The future a registered handler returns.
pub type HandlerFuture = Pin<Box<dyn Future<Output = Result<(), TaskError>> + Send + 'static>>;

/// A registered handler: decodes the JSON payload and calls the task.
pub type Handler = fn(TaskContext, &str) -> HandlerFuture;

/// What `#[task]` submits through `inventory`. Not public API.
#[derive(Debug)]
pub struct TaskRegistration {
    /// The task's options as the attribute declared them.
    pub options: TaskOptions,
    /// The decode-and-call shim.
    pub handler: Handler,
    /// Where the function is declared.
    pub file: &'static str,
    /// The line of the declaration.
    pub line: u32,
}

inventory::collect!(TaskRegistration);

/// Every task of the program, by name.
#[derive(Debug, Clone, Default)]
pub(crate) struct Registry {
    tasks: BTreeMap<&'static str, &'static TaskRegistration>,
}

impl Registry {
    /// Collects every `#[task]`; two tasks with one name are an error naming both.
    pub(crate) fn collect() -> Result<Registry> {
        Self::from_iter(inventory::iter::<TaskRegistration>)
    }

    pub(crate) fn from_iter(
        regs: impl IntoIterator<Item = &'static TaskRegistration>,
    ) -> Result<Registry> {
        let mut tasks: BTreeMap<&'static str, &'static TaskRegistration> = BTreeMap::new();
        let mut regs: Vec<_> = regs.into_iter().collect();
        // inventory's order is unspecified: sort so the error is stable.
        regs.sort_by_key(|r| (r.file, r.line));
        for reg in regs {
            if let Some(first) = tasks.get(reg.options.name) {
                return Err(Error::DuplicateTask {
                    name: reg.options.name.to_owned(),
                    first: format!("{}:{}", first.file, first.line),
                    second: format!("{}:{}", reg.file, reg.line),
                });
            }
            if let Some(cron) = reg.options.cron {
                queue_core::Schedule::parse(cron, reg.options.tz).map_err(|e| Error::Schedule {
                    task: reg.options.name.to_owned(),
                    message: e.to_string(),
                })?;
            }
            tasks.insert(reg.options.name, reg);
        }
        Ok(Registry { tasks })
    }

    pub(crate) fn get(&self, name: &str) -> Option<&'static TaskRegistration> {
        self.tasks.get(name).copied()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &'static TaskRegistration> + '_ {
        self.tasks.values().copied()
    }

    /// The flow-control limits of every task that has one.
    pub(crate) fn limits(&self) -> crate::store::limits::LimitTable {
        self.iter()
            .filter(|r| r.options.concurrency.is_some() || r.options.rate.is_some())
            .map(|r| {
                (
                    r.options.name.to_owned(),
                    crate::store::limits::TaskLimits {
                        concurrency: r.options.concurrency,
                        rate: r.options.rate,
                    },
                )
            })
            .collect()
    }

    /// Every queue that a task names, sorted.
    pub(crate) fn queues(&self) -> Vec<String> {
        let mut q: Vec<String> = self.iter().map(|r| r.options.queue.to_owned()).collect();
        q.sort();
        q.dedup();
        q
    }
}

/// The flow-control limits of every `#[task]` of this program, by name
/// (read once): what a process that enqueues or moves a job knows of its
/// task's limit even when it runs no runtime.
pub(crate) fn declared_limits() -> &'static crate::store::limits::LimitTable {
    static LIMITS: OnceLock<crate::store::limits::LimitTable> = OnceLock::new();
    LIMITS.get_or_init(|| {
        inventory::iter::<TaskRegistration>
            .into_iter()
            .filter(|r| r.options.concurrency.is_some() || r.options.rate.is_some())
            .map(|r| {
                (
                    r.options.name.to_owned(),
                    crate::store::limits::TaskLimits {
                        concurrency: r.options.concurrency,
                        rate: r.options.rate,
                    },
                )
            })
            .collect()
    })
}

/// Whether a `#[task]` of this program is named `name` (a name declared
/// twice counts: `stats()` needs no valid registry).
pub(crate) fn is_declared(name: &str) -> bool {
    static NAMES: OnceLock<BTreeSet<&'static str>> = OnceLock::new();
    NAMES
        .get_or_init(|| {
            inventory::iter::<TaskRegistration>
                .into_iter()
                .map(|r| r.options.name)
                .collect()
        })
        .contains(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handler(_: TaskContext, _: &str) -> HandlerFuture {
        Box::pin(async { Ok(()) })
    }

    static A: TaskRegistration = TaskRegistration {
        options: TaskOptions::new("billing.charge"),
        handler,
        file: "src/a.rs",
        line: 10,
    };
    static B: TaskRegistration = TaskRegistration {
        options: TaskOptions::new("billing.charge"),
        handler,
        file: "src/b.rs",
        line: 20,
    };
    static C: TaskRegistration = TaskRegistration {
        options: TaskOptions {
            queue: "mail",
            ..TaskOptions::new("mail.send")
        },
        handler,
        file: "src/c.rs",
        line: 5,
    };
    static BAD_CRON: TaskRegistration = TaskRegistration {
        options: TaskOptions {
            cron: Some("not a cron"),
            ..TaskOptions::new("bad.cron")
        },
        handler,
        file: "src/d.rs",
        line: 1,
    };

    #[test]
    fn two_tasks_with_one_name_fail_naming_both() {
        let err = Registry::from_iter([&B, &C, &A]).unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(&err, Error::DuplicateTask { name, first, second }
                if name == "billing.charge" && first == "src/a.rs:10" && second == "src/b.rs:20"),
            "{text}"
        );
        assert!(
            text.contains("src/a.rs:10") && text.contains("src/b.rs:20"),
            "{text}"
        );
    }

    #[test]
    fn registry_lists_tasks_and_queues() {
        let r = Registry::from_iter([&A, &C]).unwrap();
        assert!(r.get("mail.send").is_some());
        assert!(r.get("nope").is_none());
        assert_eq!(r.queues(), vec!["default".to_owned(), "mail".to_owned()]);
    }

    #[test]
    fn an_invalid_cron_expression_is_an_error_at_start() {
        let err = Registry::from_iter([&BAD_CRON]).unwrap_err();
        assert!(err.to_string().contains("bad.cron"), "{err}");
    }
}
