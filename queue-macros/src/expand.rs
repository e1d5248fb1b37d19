//! The code `#[task]` generates: the function as written, and beside it a
//! module of the same name with the task's name, options, typed enqueue API
//! and registration.

use std::time::Duration;

use proc_macro2::{Group, Ident, Literal, Punct, Spacing, Span, TokenStream, TokenTree};
use queue_core::{Backoff, CatchUp, Priority, TaskOptions};
use quote::{ToTokens, quote, quote_spanned};
use syn::ItemFn;
use syn::spanned::Spanned;

use crate::args::TaskArgs;
use crate::model::TaskModel;

/// Expands `#[task(args)] item`.
pub(crate) fn task(args: TokenStream, item: TokenStream) -> TokenStream {
    let func: ItemFn = match syn::parse2(item.clone()) {
        Ok(func) => func,
        Err(e) => return with_error(item, e),
    };
    let (args, mut errors) = TaskArgs::parse(args);
    let (model, model_errors) = TaskModel::from_syn(&func);
    errors.extend(model_errors);
    if args.is_periodic()
        && let Some(payload) = &model.payload
    {
        errors.push(syn::Error::new_spanned(
            &payload.ty,
            "a task with `cron` takes no payload: a cron tick carries none",
        ));
    }
    if let Some(span) = args.keyed()
        && model.payload.is_none()
        && !args.is_periodic()
    {
        errors.push(syn::Error::new(
            span,
            "a limit key is taken from the payload, and this task takes none",
        ));
    }

    match errors.into_error() {
        None => {
            let module = module(&args, &model, true);
            quote! { #item #module }
        }
        Some(e) => {
            // Still declare the module, without the parts that depend on the
            // function being right, so that code naming the task does not
            // pile "cannot find" errors on top of the real ones.
            let mut out = item;
            if !model.receiver {
                module(&args, &model, false).to_tokens(&mut out);
            }
            out.extend(e.into_compile_error());
            out
        }
    }
}

/// The item unchanged followed by the errors (as tokio's attributes do), so
/// that the rest of the crate and IDEs keep seeing the function.
fn with_error(mut item: TokenStream, error: syn::Error) -> TokenStream {
    item.extend(error.into_compile_error());
    item
}

/// The module beside the function. Without `complete`, only what does not
/// depend on the function being valid: name, options, and the typed API if
/// the payload type is usable.
fn module(args: &TaskArgs, model: &TaskModel, complete: bool) -> TokenStream {
    let ident = &model.ident;
    let vis = &model.vis;
    let cfgs = &model.cfgs;
    let doc = format!(
        "The `{ident}` task: its stored name, its options and the typed API that enqueues \
         its jobs (added by `#[task]`)."
    );
    let name = match &args.name {
        Some(name) => quote!(#name),
        None => quote!(::core::module_path!()),
    };
    let options = options(args);

    // The generated items that handle payloads are spanned at the payload
    // type, so that a type that cannot be a payload is reported there (and
    // not at the attribute), and at the function's name those that callers
    // see, so that "function defined here" points at the task.
    let payload = match &model.payload {
        None => Some((quote!(()), Span::call_site())),
        Some(p) if p.usable => Some((rescope(p.ty.to_token_stream()), p.ty.span())),
        Some(_) => None,
    };
    let typed_api = payload
        .as_ref()
        .map(|(ty, span)| typed_api(args, model.payload.is_some(), ty, *span, ident.span()));
    let handler = match (&payload, &model.output) {
        (Some((_, span)), Some(output)) if complete => Some(handler(model, *span, output)),
        _ => None,
    };

    quote! {
        #(#cfgs)*
        #[doc = #doc]
        #[allow(dead_code, unreachable_pub, clippy::all)]
        #vis mod #ident {
            #[allow(unused_imports)]
            use super::*;

            /// The name stored with each job of the task.
            pub const NAME: &str = #name;

            /// The task's options, as its `#[task]` attribute declares them.
            pub const OPTIONS: ::queue_runtime::__private::TaskOptions = #options;

            #typed_api
            #handler
        }
    }
}

/// `Payload`, `with`, `enqueue`, `enqueue_many`.
fn typed_api(
    args: &TaskArgs,
    has_payload: bool,
    payload_ty: &TokenStream,
    payload_span: Span,
    fn_span: Span,
) -> TokenStream {
    let with = Ident::new("with", fn_span);
    let enqueue = Ident::new("enqueue", fn_span);
    let enqueue_many = Ident::new("enqueue_many", fn_span);
    let enqueue_many_in = Ident::new("enqueue_many_in", fn_span);
    // The one place that needs the payload type's serde impls: a type
    // without them is reported here, once, at the payload type.
    let codec = quote_spanned! {payload_span=>
        const CODEC: &dyn ::queue_runtime::__private::Codec<Payload> =
            ::queue_runtime::__private::codec::<Payload>();
    };
    let p = quote!(::queue_runtime::__private);
    // The closures of `concurrency_key` and `rate_key`, called on the
    // payload; their result is any `Display` (spanned at the closure, so a
    // wrong type is reported there).
    let key_of = |closure: &Option<syn::ExprClosure>| match closure {
        Some(c) => quote_spanned! {c.span()=>
            ::core::option::Option::Some(::std::string::ToString::to_string(&(#c)(payload)))
        },
        None => quote!(::core::option::Option::None),
    };
    // A task without a payload has no key (reported at the key's argument).
    let keyed = has_payload && (args.concurrency_key.is_some() || args.rate_key.is_some());
    let (keyer, keyer_value) = if keyed {
        let concurrency = key_of(&args.concurrency_key);
        let rate = key_of(&args.rate_key);
        (
            quote! {
                fn __limit_keys(payload: &Payload) -> #p::LimitKeys {
                    #p::LimitKeys { concurrency: #concurrency, rate: #rate }
                }
            },
            quote!(::core::option::Option::Some(__limit_keys as #p::Keyer<Payload>)),
        )
    } else {
        (quote!(), quote!(::core::option::Option::None))
    };
    quote! {
        /// The type of the task's payload (`()` for a task without one).
        pub type Payload = #payload_ty;

        #codec

        #keyer

        const KEYER: ::core::option::Option<#p::Keyer<Payload>> = #keyer_value;

        /// The task as a value typed by its payload, for code written
        /// against a task (such as `queue_runtime::testing`).
        pub const TASK: ::queue_runtime::TaskRef<Payload> =
            ::queue_runtime::TaskRef::__new(OPTIONS, CODEC);

        /// A job of this task carrying `payload`, to adjust (priority,
        /// delay, run time, deadline, queue) and then enqueue.
        pub fn #with(payload: Payload) -> ::queue_runtime::EnqueueBuilder<Payload> {
            let builder = ::queue_runtime::EnqueueBuilder::with_encoder(OPTIONS, payload, CODEC.encoder());
            match KEYER {
                ::core::option::Option::Some(keyer) => builder.with_keyer(keyer),
                ::core::option::Option::None => builder,
            }
        }

        /// Enqueues a job of this task carrying `payload`, with the task's
        /// options, and returns its id.
        ///
        /// # Errors
        /// If the payload cannot be encoded or the insert fails; nothing is
        /// enqueued then.
        pub async fn #enqueue(
            client: &::queue_runtime::Client,
            payload: Payload,
        ) -> ::core::result::Result<::queue_runtime::JobId, ::queue_runtime::Error> {
            #with(payload).enqueue(client).await
        }

        /// Enqueues one job of this task per payload, in multi-row inserts
        /// inside one transaction, and returns their ids in order.
        ///
        /// # Errors
        /// If a payload cannot be encoded or an insert fails; nothing is
        /// enqueued then.
        pub async fn #enqueue_many<I: ::core::iter::IntoIterator<Item = Payload>>(
            client: &::queue_runtime::Client,
            payloads: I,
        ) -> ::core::result::Result<::std::vec::Vec<::queue_runtime::JobId>, ::queue_runtime::Error>
        {
            ::queue_runtime::__private::enqueue_many(client, OPTIONS, payloads, CODEC.encoder(), KEYER).await
        }

        /// Like `enqueue_many`, inside the caller's transaction on `conn`
        /// (pass `&mut tx`): the jobs exist only if it commits.
        ///
        /// # Errors
        /// If a payload cannot be encoded or an insert fails; the
        /// transaction is left to the caller then.
        pub async fn #enqueue_many_in<I: ::core::iter::IntoIterator<Item = Payload>>(
            client: &::queue_runtime::Client,
            conn: &mut ::queue_runtime::__private::MySqlConnection,
            payloads: I,
        ) -> ::core::result::Result<::std::vec::Vec<::queue_runtime::JobId>, ::queue_runtime::Error>
        {
            ::queue_runtime::__private::enqueue_many_in(client, conn, OPTIONS, payloads, CODEC.encoder(), KEYER)
                .await
        }
    }
}

/// The payload check, the decode-and-call shim and its registration.
fn handler(model: &TaskModel, payload_span: Span, output: &syn::Type) -> TokenStream {
    let ident = &model.ident;
    let assert_payload = model.payload.as_ref().map(|p| {
        let ty = rescope(p.ty.to_token_stream());
        quote_spanned! {p.ty.span()=>
            const _: () = ::queue_runtime::__private::assert_payload::<#ty>();
        }
    });
    let mut call_args = Vec::new();
    if model.ctx {
        call_args.push(quote!(__ctx));
    }
    if model.payload.is_some() {
        call_args.push(quote!(__payload));
    }
    // Spanned at the error type, so that one that does not convert into
    // `TaskError` is reported there.
    let into_result = quote_spanned! {error_type(output).span()=>
        ::queue_runtime::__private::into_task_result(__result)
    };
    // Spanned at the function's name, so that a future that is not `Send`
    // is reported there.
    let boxed = quote_spanned! {ident.span()=>
        ::std::boxed::Box::pin(async move {
            let __result = super::#ident(#(#call_args),*).await;
            #into_result
        })
    };
    let line = line_of(ident);
    let decode = quote_spanned!(payload_span=> CODEC.decode);

    quote! {
        #assert_payload

        fn __handler(
            __ctx: ::queue_runtime::TaskContext,
            __payload: &str,
        ) -> ::queue_runtime::__private::HandlerFuture {
            let __payload = match #decode(__payload) {
                ::core::result::Result::Ok(payload) => payload,
                ::core::result::Result::Err(e) => {
                    return ::std::boxed::Box::pin(async move { ::core::result::Result::Err(e) });
                }
            };
            #boxed
        }

        ::queue_runtime::__private::inventory::submit! {
            ::queue_runtime::__private::TaskRegistration {
                options: OPTIONS,
                handler: __handler,
                file: ::core::file!(),
                line: #line,
            }
        }
    }
}

/// `E` in a return type written `Result<(), E>` (whatever the path to
/// `Result`), else the whole type.
fn error_type(output: &syn::Type) -> &syn::Type {
    if let syn::Type::Path(p) = output
        && let Some(last) = p.path.segments.last()
        && let syn::PathArguments::AngleBracketed(args) = &last.arguments
        && args.args.len() == 2
        && let Some(syn::GenericArgument::Type(e)) = args.args.last()
    {
        return e;
    }
    output
}

/// The line of the function's name, for the "declared twice" error.
fn line_of(ident: &Ident) -> TokenStream {
    quote_spanned!(ident.span()=> ::core::line!())
}

/// The `TaskOptions` literal, defaults filled in.
fn options(args: &TaskArgs) -> TokenStream {
    let p = quote!(::queue_runtime::__private);
    let queue = args.queue.as_deref().unwrap_or(TaskOptions::DEFAULT_QUEUE);
    let priority = Literal::u8_unsuffixed(args.priority.unwrap_or(Priority::DEFAULT).get());
    let retries = Literal::u32_unsuffixed(args.retries.unwrap_or(TaskOptions::DEFAULT_RETRIES));
    let backoff = match args.backoff.unwrap_or(Backoff::DEFAULT) {
        Backoff::Constant(d) => {
            let d = duration(d);
            quote!(#p::Backoff::Constant(#d))
        }
        Backoff::Linear(d) => {
            let d = duration(d);
            quote!(#p::Backoff::Linear(#d))
        }
        Backoff::Exponential { base, max } => {
            let (base, max) = (duration(base), duration(max));
            quote!(#p::Backoff::Exponential { base: #base, max: #max })
        }
    };
    let deadline = option(args.deadline.map(duration));
    let cron = option(args.cron.as_ref().map(|c| quote!(#c)));
    let tz = option(args.tz.as_ref().map(|t| quote!(#t)));
    let overlap = args.overlap.unwrap_or(true);
    let concurrency = option(args.concurrency.map(|n| {
        let n = Literal::u32_unsuffixed(n);
        quote!(#n)
    }));
    let rate = option(args.rate.map(|r| {
        let count = Literal::u32_unsuffixed(r.count);
        let per = duration(r.per);
        quote!(#p::Rate { count: #count, per: #per })
    }));
    let catch_up = match args.catch_up.unwrap_or_default() {
        CatchUp::Latest => quote!(#p::CatchUp::Latest),
        CatchUp::Skip => quote!(#p::CatchUp::Skip),
    };
    quote! {
        #p::TaskOptions {
            name: NAME,
            queue: #queue,
            priority: #p::priority(#priority),
            retries: #retries,
            backoff: #backoff,
            deadline: #deadline,
            cron: #cron,
            tz: #tz,
            catch_up: #catch_up,
            overlap: #overlap,
            concurrency: #concurrency,
            rate: #rate,
        }
    }
}

/// A `Duration` expression, exact.
fn duration(d: Duration) -> TokenStream {
    let p = quote!(::queue_runtime::__private);
    match u64::try_from(d.as_millis()) {
        Ok(ms) if d.subsec_nanos().is_multiple_of(1_000_000) => {
            let ms = Literal::u64_unsuffixed(ms);
            quote!(#p::Duration::from_millis(#ms))
        }
        _ => {
            let secs = Literal::u64_unsuffixed(d.as_secs());
            let nanos = Literal::u32_unsuffixed(d.subsec_nanos());
            quote!(#p::Duration::new(#secs, #nanos))
        }
    }
}

/// `Some(value)` or `None`, with absolute paths.
fn option(value: Option<TokenStream>) -> TokenStream {
    match value {
        Some(v) => quote!(::core::option::Option::Some(#v)),
        None => quote!(::core::option::Option::None),
    }
}

/// Rewrites a type written beside the function so that it means the same
/// inside the generated module: a leading `self` becomes `super`, a leading
/// `super` becomes `super::super`, and a leading `Payload` (which the module's
/// own `Payload` alias would shadow) becomes `super::Payload`. Every other
/// name reaches the module through its `use super::*`.
fn rescope(tokens: TokenStream) -> TokenStream {
    let mut out = Vec::new();
    // How many `:` puncts came just before: two means the next token
    // continues a path rather than starting one.
    let mut colons = 0;
    for tt in tokens {
        let after_path_sep = colons >= 2;
        match &tt {
            TokenTree::Punct(p) if p.as_char() == ':' => colons += 1,
            _ => colons = 0,
        }
        match tt {
            TokenTree::Group(g) => {
                let mut group = Group::new(g.delimiter(), rescope(g.stream()));
                group.set_span(g.span());
                out.push(TokenTree::Group(group));
            }
            TokenTree::Ident(i) if !after_path_sep && i == "self" => {
                out.push(TokenTree::Ident(Ident::new("super", i.span())));
            }
            TokenTree::Ident(i) if !after_path_sep && (i == "super" || i == "Payload") => {
                out.extend(super_path(i.span()));
                out.push(TokenTree::Ident(i));
            }
            tt => out.push(tt),
        }
    }
    out.into_iter().collect()
}

/// `super ::` at `span`.
fn super_path(span: Span) -> [TokenTree; 3] {
    let mut first = Punct::new(':', Spacing::Joint);
    first.set_span(span);
    let mut second = Punct::new(':', Spacing::Alone);
    second.set_span(span);
    [
        TokenTree::Ident(Ident::new("super", span)),
        TokenTree::Punct(first),
        TokenTree::Punct(second),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rescoped(ty: &str) -> String {
        let ty: syn::Type = syn::parse_str(ty).unwrap();
        let out: syn::Type = syn::parse2(rescope(ty.to_token_stream())).unwrap();
        out.to_token_stream().to_string()
    }

    #[test]
    fn rescope_paths() {
        assert_eq!(rescoped("Email"), "Email");
        assert_eq!(rescoped("self::Email"), "super :: Email");
        assert_eq!(rescoped("super::Email"), "super :: super :: Email");
        assert_eq!(
            rescoped("super::super::Email"),
            "super :: super :: super :: Email"
        );
        assert_eq!(rescoped("crate::m::Email"), "crate :: m :: Email");
        assert_eq!(rescoped("::m::Payload"), ":: m :: Payload");
        assert_eq!(rescoped("Payload"), "super :: Payload");
        assert_eq!(
            rescoped("Vec<(self::A, Payload)>"),
            "Vec < (super :: A , super :: Payload) >"
        );
        assert_eq!(
            rescoped("<X as self::T>::Payload"),
            "< X as super :: T > :: Payload"
        );
    }

    #[test]
    fn durations_are_exact() {
        let ms = duration(Duration::from_secs(30)).to_string();
        assert!(ms.ends_with("Duration :: from_millis (30000)"), "{ms}");
        let ns = duration(Duration::new(1, 5)).to_string();
        assert!(ns.ends_with("Duration :: new (1 , 5)"), "{ns}");
    }
}
