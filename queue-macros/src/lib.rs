//! The `#[task]` attribute of queue-runtime (being written).
use proc_macro::TokenStream;

/// Declares a task (placeholder while the real expansion is written).
#[proc_macro_attribute]
pub fn task(_args: TokenStream, item: TokenStream) -> TokenStream {
    item
}
