//! Output building blocks, below every signal: metric families (`families`) and the
//! plain types a signal fills in for `top` and the detail view (`parts`). Signals and
//! verify build with them; the views above lay them out.

pub(crate) mod families;
pub(crate) mod parts;

use serde::Serialize;

/// The name a unit enum has in the JSON (`tcp_retransmit`, `no significant change`), for
/// tables and metric labels that should say the same.
pub(crate) fn serde_name<T: Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}
