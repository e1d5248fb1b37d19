//! The arguments of `#[task(...)]`: parsed, checked with queue-core's own
//! parsers, every mistake collected.

use std::str::FromStr;
use std::time::Duration;

use proc_macro2::{Span, TokenStream};
use queue_core::{Backoff, CatchUp, Priority, Schedule};
use syn::ext::IdentExt;
use syn::parse::{ParseStream, Parser};
use syn::{Expr, ExprLit, Ident, Lit, LitStr, Token};

/// The keywords of the attribute.
mod kw {
    syn::custom_keyword!(priority);
    syn::custom_keyword!(retries);
    syn::custom_keyword!(deadline);
    syn::custom_keyword!(queue);
    syn::custom_keyword!(backoff);
    syn::custom_keyword!(cron);
    syn::custom_keyword!(tz);
    syn::custom_keyword!(catch_up);
    syn::custom_keyword!(overlap);
    syn::custom_keyword!(name);
    syn::custom_keyword!(concurrency);
    syn::custom_keyword!(concurrency_key);
    syn::custom_keyword!(rate);
    syn::custom_keyword!(rate_key);
}

/// The checked arguments of one `#[task(...)]`. A missing argument is
/// `None` and gets its default at expansion; so does an argument whose value
/// was rejected (its error is reported separately).
#[derive(Default)]
pub(crate) struct TaskArgs {
    pub(crate) priority: Option<Priority>,
    pub(crate) retries: Option<u32>,
    pub(crate) deadline: Option<Duration>,
    pub(crate) queue: Option<String>,
    pub(crate) backoff: Option<Backoff>,
    pub(crate) cron: Option<String>,
    pub(crate) tz: Option<String>,
    pub(crate) catch_up: Option<CatchUp>,
    pub(crate) overlap: Option<bool>,
    pub(crate) name: Option<String>,
    pub(crate) concurrency: Option<u32>,
    /// The closure that takes a payload to its concurrency key.
    pub(crate) concurrency_key: Option<syn::ExprClosure>,
    pub(crate) rate: Option<queue_core::Rate>,
    /// The closure that takes a payload to its rate key.
    pub(crate) rate_key: Option<syn::ExprClosure>,
    /// Every key given, with its span, valid value or not.
    seen: Vec<(Key, Span)>,
}

/// One key of the attribute.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Key {
    Priority,
    Retries,
    Deadline,
    Queue,
    Backoff,
    Cron,
    Tz,
    CatchUp,
    Overlap,
    Name,
    Concurrency,
    PartitionConcurrency,
    Rate,
    PartitionRate,
}

impl Key {
    /// Every key, in the order the "unknown argument" error lists them.
    const ALL: [Key; 14] = [
        Key::Priority,
        Key::Retries,
        Key::Deadline,
        Key::Queue,
        Key::Backoff,
        Key::Cron,
        Key::Tz,
        Key::CatchUp,
        Key::Overlap,
        Key::Name,
        Key::Concurrency,
        Key::PartitionConcurrency,
        Key::Rate,
        Key::PartitionRate,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Key::Priority => "priority",
            Key::Retries => "retries",
            Key::Deadline => "deadline",
            Key::Queue => "queue",
            Key::Backoff => "backoff",
            Key::Cron => "cron",
            Key::Tz => "tz",
            Key::CatchUp => "catch_up",
            Key::Overlap => "overlap",
            Key::Name => "name",
            Key::Concurrency => "concurrency",
            Key::PartitionConcurrency => "concurrency_key",
            Key::Rate => "rate",
            Key::PartitionRate => "rate_key",
        }
    }
}

/// Gathers errors so that every mistake of an attribute shows at once.
#[derive(Default)]
pub(crate) struct Errors(Option<syn::Error>);

impl Errors {
    /// Adds one error.
    pub(crate) fn push(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(error),
            None => self.0 = Some(error),
        }
    }

    /// Adds every error of `other`.
    pub(crate) fn extend(&mut self, other: Errors) {
        if let Some(e) = other.0 {
            self.push(e);
        }
    }

    /// The gathered errors, if any.
    pub(crate) fn into_error(self) -> Option<syn::Error> {
        self.0
    }
}

impl TaskArgs {
    /// Parses the attribute's arguments. Returns what could be read together
    /// with every error found: a syntax error stops the parse, a rejected
    /// value does not.
    pub(crate) fn parse(tokens: TokenStream) -> (TaskArgs, Errors) {
        let mut args = TaskArgs::default();
        let mut errors = Errors::default();
        let parser = |input: ParseStream<'_>| {
            args.parse_list(input, &mut errors);
            Ok(())
        };
        // `parse_list` reports its own errors and reads to the end, so this
        // cannot fail; keep any error all the same.
        if let Err(e) = parser.parse2(tokens) {
            errors.push(e);
        }
        args.check_schedule(&mut errors);
        args.check_limits(&mut errors);
        (args, errors)
    }

    fn parse_list(&mut self, input: ParseStream<'_>, errors: &mut Errors) {
        while !input.is_empty() {
            if let Err(e) = self.parse_one(input, errors) {
                errors.push(e);
                // Skip the rest: after a syntax error nothing more is known.
                let _ = input.step(|cursor| {
                    let mut rest = *cursor;
                    while let Some((_, next)) = rest.token_tree() {
                        rest = next;
                    }
                    Ok(((), rest))
                });
                return;
            }
        }
    }

    /// Reads `key = value` and an optional trailing comma.
    fn parse_one(&mut self, input: ParseStream<'_>, errors: &mut Errors) -> syn::Result<()> {
        let lookahead = input.lookahead1();
        let key = if lookahead.peek(kw::priority) {
            Some(key_of::<kw::priority>(input, Key::Priority)?)
        } else if lookahead.peek(kw::retries) {
            Some(key_of::<kw::retries>(input, Key::Retries)?)
        } else if lookahead.peek(kw::deadline) {
            Some(key_of::<kw::deadline>(input, Key::Deadline)?)
        } else if lookahead.peek(kw::queue) {
            Some(key_of::<kw::queue>(input, Key::Queue)?)
        } else if lookahead.peek(kw::backoff) {
            Some(key_of::<kw::backoff>(input, Key::Backoff)?)
        } else if lookahead.peek(kw::cron) {
            Some(key_of::<kw::cron>(input, Key::Cron)?)
        } else if lookahead.peek(kw::tz) {
            Some(key_of::<kw::tz>(input, Key::Tz)?)
        } else if lookahead.peek(kw::catch_up) {
            Some(key_of::<kw::catch_up>(input, Key::CatchUp)?)
        } else if lookahead.peek(kw::overlap) {
            Some(key_of::<kw::overlap>(input, Key::Overlap)?)
        } else if lookahead.peek(kw::name) {
            Some(key_of::<kw::name>(input, Key::Name)?)
        } else if lookahead.peek(kw::concurrency) {
            Some(key_of::<kw::concurrency>(input, Key::Concurrency)?)
        } else if lookahead.peek(kw::concurrency_key) {
            Some(key_of::<kw::concurrency_key>(
                input,
                Key::PartitionConcurrency,
            )?)
        } else if lookahead.peek(kw::rate) {
            Some(key_of::<kw::rate>(input, Key::Rate)?)
        } else if lookahead.peek(kw::rate_key) {
            Some(key_of::<kw::rate_key>(input, Key::PartitionRate)?)
        } else if input.peek(Ident::peek_any) {
            let unknown = Ident::parse_any(input)?;
            let expected: Vec<String> = Key::ALL
                .iter()
                .map(|k| format!("`{}`", k.as_str()))
                .collect();
            errors.push(syn::Error::new(
                unknown.span(),
                format!(
                    "unknown argument `{unknown}`: expected one of {}",
                    expected.join(", ")
                ),
            ));
            None
        } else {
            return Err(lookahead.error());
        };
        input.parse::<Token![=]>()?;
        let value: Expr = input.parse()?;
        if !input.is_empty() {
            input.parse::<Token![,]>()?;
        }
        let Some((key, span)) = key else {
            return Ok(());
        };
        if self.given(key).is_some() {
            errors.push(syn::Error::new(
                span,
                format!("`{}` given more than once", key.as_str()),
            ));
            return Ok(());
        }
        self.seen.push((key, span));
        if let Err(e) = self.set(key, &value) {
            errors.push(e);
        }
        Ok(())
    }

    /// Whether `cron` was given (even with a rejected value).
    pub(crate) fn is_periodic(&self) -> bool {
        self.given(Key::Cron).is_some()
    }

    /// The span of `key` if it was given.
    fn given(&self, key: Key) -> Option<Span> {
        self.seen
            .iter()
            .find(|(k, _)| *k == key)
            .map(|&(_, span)| span)
    }

    /// `tz`, `catch_up` and `overlap` only mean something for a periodic
    /// task.
    fn check_schedule(&self, errors: &mut Errors) {
        if self.given(Key::Cron).is_some() {
            return;
        }
        for key in [Key::Tz, Key::CatchUp, Key::Overlap] {
            if let Some(span) = self.given(key) {
                errors.push(syn::Error::new(
                    span,
                    format!("`{}` requires `cron`", key.as_str()),
                ));
            }
        }
    }

    /// A key partitions a limit: it needs that limit, and a payload to be
    /// taken from (a periodic task has none).
    fn check_limits(&self, errors: &mut Errors) {
        for (key, limit) in [
            (Key::PartitionConcurrency, Key::Concurrency),
            (Key::PartitionRate, Key::Rate),
        ] {
            let Some(span) = self.given(key) else {
                continue;
            };
            if self.given(limit).is_none() {
                errors.push(syn::Error::new(
                    span,
                    format!("`{}` requires `{}`", key.as_str(), limit.as_str()),
                ));
            } else if self.is_periodic() {
                errors.push(syn::Error::new(
                    span,
                    format!(
                        "`{}` cannot be used with `cron`: a cron tick has no payload to take a key from",
                        key.as_str()
                    ),
                ));
            }
        }
    }

    /// Whether `concurrency_key` or `rate_key` was given.
    pub(crate) fn keyed(&self) -> Option<Span> {
        self.given(Key::PartitionConcurrency)
            .or_else(|| self.given(Key::PartitionRate))
    }

    /// Checks and stores one value.
    fn set(&mut self, key: Key, value: &Expr) -> syn::Result<()> {
        match key {
            Key::Priority => {
                let msg = "`priority` must be an integer from 0 (highest) to 4 (lowest)";
                let v = non_negative_int(value).ok_or_else(|| error(value, msg))?;
                let p = u8::try_from(v)
                    .map_err(|_| {
                        // Beyond `u8`: the same words as `PriorityError`.
                        format!(
                            "priority `{v}` is out of range: expected 0 (highest) to 4 (lowest)"
                        )
                    })
                    .and_then(|v| Priority::new(v).map_err(|e| e.to_string()))
                    .map_err(|msg| error(value, msg))?;
                self.priority = Some(p);
            }
            Key::Retries => {
                let msg = "`retries` must be a non-negative integer";
                let v = non_negative_int(value).ok_or_else(|| error(value, msg))?;
                let v = u32::try_from(v)
                    .map_err(|_| error(value, format!("`retries` must be at most {}", u32::MAX)))?;
                self.retries = Some(v);
            }
            Key::Deadline => {
                let s = string(value, "`deadline` must be a string such as \"30s\"")?;
                let d = queue_core::parse_duration(&s.value()).map_err(|e| error(&s, e))?;
                if d.is_zero() {
                    return Err(error(&s, "`deadline` must be greater than zero"));
                }
                self.deadline = Some(d);
            }
            Key::Queue => {
                let s = string(value, "`queue` must be a string such as \"mail\"")?;
                queue_core::validate_queue_name(&s.value()).map_err(|e| error(&s, e))?;
                self.queue = Some(s.value());
            }
            Key::Backoff => {
                let s = string(
                    value,
                    "`backoff` must be a string such as \"exponential(1s, 10m)\"",
                )?;
                let b = Backoff::from_str(&s.value()).map_err(|e| error(&s, e))?;
                self.backoff = Some(b);
            }
            Key::Cron => {
                let s = string(value, "`cron` must be a string such as \"0 */5 * * * *\"")?;
                // The zone is checked on its own (see `check_schedule`), so
                // that a bad expression and a bad zone both show.
                Schedule::parse(&s.value(), None).map_err(|e| error(&s, e))?;
                self.cron = Some(s.value());
            }
            Key::Tz => {
                let s = string(value, "`tz` must be a string such as \"Europe/Berlin\"")?;
                // Any valid expression will do: only the zone is checked here.
                Schedule::parse("0 0 0 * * *", Some(&s.value())).map_err(|e| error(&s, e))?;
                self.tz = Some(s.value());
            }
            Key::CatchUp => {
                let s = string(value, "`catch_up` must be \"latest\" or \"skip\"")?;
                let c = CatchUp::from_str(&s.value()).map_err(|e| error(&s, e))?;
                self.catch_up = Some(c);
            }
            Key::Overlap => match value {
                Expr::Lit(ExprLit {
                    lit: Lit::Bool(b), ..
                }) => self.overlap = Some(b.value),
                _ => return Err(error(value, "`overlap` must be `true` or `false`")),
            },
            Key::Concurrency => {
                let msg = "`concurrency` must be an integer from 1: how many jobs of the task may run at once";
                let v = non_negative_int(value).ok_or_else(|| error(value, msg))?;
                let v = u32::try_from(v).ok().filter(|v| *v >= 1).ok_or_else(|| {
                    error(
                        value,
                        format!("`concurrency` must be from 1 to {}", u32::MAX),
                    )
                })?;
                self.concurrency = Some(v);
            }
            Key::Rate => {
                let s = string(
                    value,
                    "`rate` must be a string such as \"100/1s\" or \"1000/1h\"",
                )?;
                let r = queue_core::Rate::from_str(&s.value()).map_err(|e| error(&s, e))?;
                self.rate = Some(r);
            }
            Key::PartitionConcurrency | Key::PartitionRate => {
                let closure = match value {
                    Expr::Closure(c)
                        if c.inputs.len() == 1 && c.capture.is_none() && c.asyncness.is_none() =>
                    {
                        c.clone()
                    }
                    _ => {
                        return Err(error(
                            value,
                            format!(
                                "`{}` must be a closure from a reference to the payload to its key, \
                                 such as `|o: &Order| o.customer_id`",
                                key.as_str()
                            ),
                        ));
                    }
                };
                if key == Key::PartitionConcurrency {
                    self.concurrency_key = Some(closure);
                } else {
                    self.rate_key = Some(closure);
                }
            }
            Key::Name => {
                let s = string(value, "`name` must be a string such as \"mail.send\"")?;
                queue_core::validate_task_name(&s.value()).map_err(|e| error(&s, e))?;
                self.name = Some(s.value());
            }
        }
        Ok(())
    }
}

/// Parses a keyword and returns its key and span.
fn key_of<K: syn::parse::Parse + syn::spanned::Spanned>(
    input: ParseStream<'_>,
    key: Key,
) -> syn::Result<(Key, Span)> {
    let k: K = input.parse()?;
    Ok((key, k.span()))
}

/// An error at `tokens`.
fn error(tokens: impl quote::ToTokens, message: impl std::fmt::Display) -> syn::Error {
    syn::Error::new_spanned(tokens, message)
}

/// The value as a string literal.
fn string(value: &Expr, message: &str) -> syn::Result<LitStr> {
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) => Ok(s.clone()),
        _ => Err(error(value, message)),
    }
}

/// The value as a non-negative integer literal, if it is one.
fn non_negative_int(value: &Expr) -> Option<u128> {
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Int(i), ..
        }) => i.base10_parse::<u128>().ok(),
        Expr::Group(g) => non_negative_int(&g.expr),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;

    fn messages(tokens: TokenStream) -> Vec<String> {
        let (_, errors) = TaskArgs::parse(tokens);
        errors
            .into_error()
            .map(|e| e.into_iter().map(|e| e.to_string()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn every_argument() {
        let (args, errors) = TaskArgs::parse(quote!(
            priority = 0,
            retries = 10,
            deadline = "250ms",
            queue = "mail",
            backoff = "linear(10s)",
            cron = "*/5 * * * *",
            tz = "Europe/Berlin",
            catch_up = "skip",
            overlap = false,
            name = "mail.send",
        ));
        assert!(errors.into_error().is_none());
        assert_eq!(args.priority, Some(Priority::HIGHEST));
        assert_eq!(args.retries, Some(10));
        assert_eq!(args.deadline, Some(Duration::from_millis(250)));
        assert_eq!(args.queue.as_deref(), Some("mail"));
        assert_eq!(args.backoff, Some(Backoff::Linear(Duration::from_secs(10))));
        assert_eq!(args.cron.as_deref(), Some("*/5 * * * *"));
        assert_eq!(args.tz.as_deref(), Some("Europe/Berlin"));
        assert_eq!(args.catch_up, Some(CatchUp::Skip));
        assert_eq!(args.overlap, Some(false));
        assert_eq!(args.name.as_deref(), Some("mail.send"));
        assert!(args.is_periodic());
    }

    #[test]
    fn nothing() {
        let (args, errors) = TaskArgs::parse(TokenStream::new());
        assert!(errors.into_error().is_none());
        assert!(args.priority.is_none() && !args.is_periodic());
    }

    #[test]
    fn every_mistake_is_reported() {
        assert_eq!(
            messages(quote!(
                prio = 1,
                priority = 5,
                retries = -1,
                retries = 2,
                deadline = "0s",
                catch_up = "never",
                priority = 300,
            )),
            [
                "unknown argument `prio`: expected one of `priority`, `retries`, `deadline`, \
                 `queue`, `backoff`, `cron`, `tz`, `catch_up`, `overlap`, `name`, `concurrency`, `concurrency_key`, `rate`, `rate_key`",
                "priority `5` is out of range: expected 0 (highest) to 4 (lowest)",
                "`retries` must be a non-negative integer",
                "`retries` given more than once",
                "`deadline` must be greater than zero",
                "invalid catch-up `never`: expected `latest` or `skip`",
                "`priority` given more than once",
                "`catch_up` requires `cron`",
            ]
        );
        assert_eq!(
            messages(quote!(cron = "* * * * *", overlap = "no")),
            ["`overlap` must be `true` or `false`"]
        );
        assert_eq!(
            messages(quote!(overlap = false)),
            ["`overlap` requires `cron`"]
        );
        assert_eq!(
            messages(quote!(priority = 300)),
            ["priority `300` is out of range: expected 0 (highest) to 4 (lowest)"]
        );
        assert_eq!(
            messages(quote!(retries = 4294967296)),
            ["`retries` must be at most 4294967295"]
        );
        assert_eq!(
            messages(quote!(queue = mail)),
            ["`queue` must be a string such as \"mail\""]
        );
    }

    #[test]
    fn syntax_errors_stop_the_parse() {
        assert_eq!(messages(quote!(priority 1)), ["expected `=`"]);
        assert_eq!(
            messages(quote!(5)),
            [
                "expected one of: `priority`, `retries`, `deadline`, `queue`, `backoff`, `cron`, \
              `tz`, `catch_up`, `overlap`, `name`, `concurrency`, `concurrency_key`, `rate`, \
              `rate_key`"
            ]
        );
        // Mistakes before the syntax error are still reported.
        assert_eq!(
            messages(quote!(priority = 9, retries)),
            [
                "priority `9` is out of range: expected 0 (highest) to 4 (lowest)",
                "expected `=`"
            ]
        );
    }
}
