//! What `#[task]` needs to know about the function it is applied to.

use syn::{Attribute, FnArg, Ident, ItemFn, ReturnType, Type, Visibility};

use crate::args::Errors;

/// The function behind a task, read from its signature.
pub(crate) struct TaskModel {
    /// The function's name, also the name of the generated module.
    pub(crate) ident: Ident,
    /// The function's visibility, given to the module too.
    pub(crate) vis: Visibility,
    /// The function's `#[cfg]`s, repeated on the module so that both come
    /// and go together.
    pub(crate) cfgs: Vec<Attribute>,
    /// Whether the function takes `self`: a method, where no module can be
    /// added beside it.
    pub(crate) receiver: bool,
    /// Whether the first parameter is a `TaskContext`.
    pub(crate) ctx: bool,
    /// The payload parameter, if any.
    pub(crate) payload: Option<Payload>,
    /// The declared return type; `None` if there is none.
    pub(crate) output: Option<Type>,
}

/// The payload parameter of a task.
pub(crate) struct Payload {
    /// The type as written.
    pub(crate) ty: Type,
    /// Whether the type can be a payload at all (not a reference, not
    /// `impl Trait`, not naming the function's generics). A rejected type
    /// has an error reported already and is kept only to point at.
    pub(crate) usable: bool,
}

impl TaskModel {
    /// Reads `item`'s signature. Returns the model as far as it could be
    /// made out, with every error found.
    pub(crate) fn from_syn(item: &ItemFn) -> (TaskModel, Errors) {
        let sig = &item.sig;
        let mut errors = Errors::default();

        if sig.asyncness.is_none() {
            errors.push(syn::Error::new(
                sig.fn_token.span,
                "`#[task]` requires an `async fn`",
            ));
        }
        if let Some(unsafety) = &sig.unsafety {
            errors.push(syn::Error::new(
                unsafety.span,
                "`#[task]` cannot be used on an `unsafe fn`",
            ));
        }
        if let Some(constness) = &sig.constness {
            errors.push(syn::Error::new(
                constness.span,
                "`#[task]` cannot be used on a `const fn`",
            ));
        }
        if !sig.generics.params.is_empty() {
            errors.push(syn::Error::new_spanned(
                &sig.generics,
                "`#[task]` functions cannot be generic: the payload must be one concrete type",
            ));
        } else if let Some(where_clause) = &sig.generics.where_clause {
            errors.push(syn::Error::new_spanned(
                where_clause,
                "`#[task]` functions cannot have a `where` clause",
            ));
        }
        if let Some(variadic) = &sig.variadic {
            errors.push(syn::Error::new_spanned(
                variadic,
                "`#[task]` functions cannot be variadic",
            ));
        }

        let mut receiver = false;
        let mut ctx = false;
        let mut payload: Option<Payload> = None;
        for (index, input) in sig.inputs.iter().enumerate() {
            let ty = match input {
                FnArg::Receiver(this) => {
                    errors.push(syn::Error::new_spanned(
                        this,
                        "`#[task]` cannot take `self`: a task is a free function",
                    ));
                    receiver = true;
                    continue;
                }
                FnArg::Typed(typed) => &*typed.ty,
            };
            if is_context(ty) {
                if index == 0 {
                    ctx = true;
                } else {
                    errors.push(syn::Error::new_spanned(
                        ty,
                        "`TaskContext` must be the first parameter",
                    ));
                }
                continue;
            }
            if is_context_ref(ty) {
                // The context by reference: say how to take it, and do not
                // count it as the payload (which would add "at most one
                // payload" under the real one).
                errors.push(syn::Error::new_spanned(
                    ty,
                    "take `TaskContext` by value, as the first parameter (it is cheap to clone)",
                ));
                continue;
            }
            if payload.is_some() {
                errors.push(syn::Error::new_spanned(
                    ty,
                    "a task takes at most one payload: put the values in one struct or tuple",
                ));
                continue;
            }
            let usable = match payload_problem(ty) {
                Some(message) => {
                    errors.push(syn::Error::new_spanned(ty, message));
                    false
                }
                None => true,
            };
            payload = Some(Payload {
                ty: ty.clone(),
                usable,
            });
        }

        // A payload type naming the function's generics means nothing
        // outside it.
        if !sig.generics.params.is_empty()
            && let Some(payload) = &mut payload
        {
            payload.usable = false;
        }

        let output = match &sig.output {
            ReturnType::Type(_, ty) => Some((**ty).clone()),
            ReturnType::Default => {
                errors.push(syn::Error::new(
                    sig.paren_token.span.close(),
                    "`#[task]` functions must return `Result<(), E>` with `E: Into<TaskError>`",
                ));
                None
            }
        };

        let cfgs = item
            .attrs
            .iter()
            .filter(|a| a.path().is_ident("cfg"))
            .cloned()
            .collect();
        let model = TaskModel {
            ident: sig.ident.clone(),
            vis: item.vis.clone(),
            cfgs,
            receiver,
            ctx,
            payload,
            output,
        };
        (model, errors)
    }
}

/// Whether `ty` is `TaskContext` (by the last segment of its path, so that
/// `queue_runtime::TaskContext` and a renamed import both count).
fn is_context(ty: &Type) -> bool {
    match ty {
        Type::Path(p) if p.qself.is_none() => p
            .path
            .segments
            .last()
            .is_some_and(|s| s.ident == "TaskContext" && s.arguments.is_none()),
        Type::Group(g) => is_context(&g.elem),
        Type::Paren(p) => is_context(&p.elem),
        _ => false,
    }
}

/// Whether `ty` is `&TaskContext` or `&mut TaskContext`.
fn is_context_ref(ty: &Type) -> bool {
    match ty {
        Type::Reference(r) => is_context(&r.elem),
        Type::Group(g) => is_context_ref(&g.elem),
        Type::Paren(p) => is_context_ref(&p.elem),
        _ => false,
    }
}

/// Why `ty` cannot be a payload, if it cannot.
fn payload_problem(ty: &Type) -> Option<&'static str> {
    match ty {
        Type::Reference(_) => Some(
            "the payload cannot be a reference: it is decoded from the job into an owned value",
        ),
        Type::ImplTrait(_) => {
            Some("the payload must be a concrete type, not `impl Trait`: it is decoded from JSON")
        }
        Type::Infer(_) => Some("the payload type must be written out"),
        Type::Group(g) => payload_problem(&g.elem),
        Type::Paren(p) => payload_problem(&p.elem),
        _ => None,
    }
}
