//! [`TaskRef`]: a declared task as a value, typed by its payload.

use std::fmt;

use queue_core::{TaskError, TaskOptions};

use crate::__private::Codec;

/// A task declared with `#[task]`, as a value typed by its payload: the
/// `TASK` constant of the module the attribute adds beside the function
/// (`send_email::TASK` is a `TaskRef<Email>`).
///
/// It names the task and knows how its payloads are stored, so that code
/// written against a task, such as the helpers of `queue_runtime::testing`
/// (feature `testing`), gets typed payloads back:
/// `testing::enqueued(&client, send_email::TASK)` is a list of `Email`s.
pub struct TaskRef<P: 'static> {
    options: TaskOptions,
    codec: &'static dyn Codec<P>,
}

impl<P: 'static> TaskRef<P> {
    /// What `#[task]` generates. Not public API.
    #[doc(hidden)]
    pub const fn __new(options: TaskOptions, codec: &'static dyn Codec<P>) -> Self {
        TaskRef { options, codec }
    }

    /// The name stored with each job of the task.
    pub fn name(&self) -> &'static str {
        self.options.name
    }

    /// The task's options, as its attribute declares them.
    pub fn options(&self) -> &TaskOptions {
        &self.options
    }

    /// The JSON text stored for `payload`.
    ///
    /// # Errors
    /// [`Error::Encode`](crate::Error::Encode) if serde cannot encode it.
    pub fn encode(&self, payload: &P) -> crate::Result<String> {
        (self.codec.encoder())(payload).map_err(|source| crate::Error::Encode {
            task: self.options.name.to_owned(),
            source,
        })
    }

    /// The payload stored as `json`.
    ///
    /// # Errors
    /// A permanent [`TaskError`] of kind `Decode` if it does not decode.
    pub fn decode(&self, json: &str) -> Result<P, TaskError> {
        self.codec.decode(json)
    }
}

impl<P> Clone for TaskRef<P> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<P> Copy for TaskRef<P> {}

impl<P> fmt::Debug for TaskRef<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskRef")
            .field("name", &self.options.name)
            .field("payload", &std::any::type_name::<P>())
            .finish()
    }
}
