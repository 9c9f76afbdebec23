//! How a signal declares a measure `verify` judges: what it counts and per what, and
//! where the same counts are in the metrics every agent exports. Each signal module
//! holds the declarations of its measures next to its metric-name constants;
//! [`Measure::declared`](super::measure::Measure::declared) names them, and `verify`,
//! `fleet verify`, the recording rules, `--help` and the docs all read them from there.

/// One measure, declared by its signal.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Declaration {
    /// What it counts, per what.
    pub what: &'static str,
    /// Its load's name in a verdict (`load`), `None` for a plain count.
    pub load: Option<&'static str>,
    /// Where the counts and the load come from.
    pub source: &'static str,
    /// Kept per block device too, for device-scoped knobs.
    pub per_device: bool,
    /// Judged (lower is better); `false` for context that notes quote.
    pub judged: bool,
    /// The same measure from the exported metrics (`fleet verify`, recording rules).
    pub exported: Exported,
}

impl Declaration {
    /// A judged measure, not per device.
    pub const fn judged(
        what: &'static str,
        load: Option<&'static str>,
        source: &'static str,
        exported: Exported,
    ) -> Self {
        Self {
            what,
            load,
            source,
            per_device: false,
            judged: true,
            exported,
        }
    }

    /// Kept per block device too.
    pub const fn per_device(self) -> Self {
        Self {
            per_device: true,
            ..self
        }
    }

    /// Context that verdict notes quote, never judged itself.
    pub const fn context(self) -> Self {
        Self {
            judged: false,
            ..self
        }
    }
}

/// A counter family, narrowed to some values of one of its labels or not at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter {
    pub name: &'static str,
    /// A label and the values counted (`reason` in `CPU_BACKLOG`), or `None` for all.
    pub only: Option<(&'static str, &'static [&'static str])>,
}

impl Counter {
    pub const fn of(name: &'static str) -> Self {
        Self { name, only: None }
    }

    pub const fn only(
        name: &'static str,
        label: &'static str,
        values: &'static [&'static str],
    ) -> Self {
        Self {
            name,
            only: Some((label, values)),
        }
    }

    /// The label matcher narrowing it, with a trailing comma (`reason="A",`,
    /// `reason=~"A|B",`), or empty.
    pub fn matchers(&self) -> String {
        match self.only {
            None => String::new(),
            Some((label, [value])) => format!("{label}=\"{value}\","),
            Some((label, values)) => format!("{label}=~\"{}\",", values.join("|")),
        }
    }
}

/// Where a measure's samples come from in the exported metrics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Exported {
    /// `part` per load, both counters. The load is `whole`, or with `whole_adds_part`
    /// `part + whole`: listen overflows per connection attempt, the attempts being the
    /// overflows and the accepted connections (`verify`'s `listen_overflow_ratio`).
    Ratio {
        part: Counter,
        whole: Counter,
        whole_adds_part: bool,
        /// The ratio's unit: 1000 for seconds per period read as milliseconds.
        scale: f64,
    },
    /// A counter's increase per interval; no load.
    Count(Counter),
    /// A histogram in seconds: the interval's mean (`_sum` / `_count`) or a quantile of
    /// its bucket increases, in milliseconds; the `_count` increase is the load.
    Histogram {
        /// The family, and the label values it is narrowed to (`op` in `write`).
        of: Counter,
        quantile: Option<f64>,
    },
}

impl Exported {
    /// `part` per `whole`.
    pub const fn ratio(part: Counter, whole: Counter) -> Self {
        Self::Ratio {
            part,
            whole,
            whole_adds_part: false,
            scale: 1.0,
        }
    }

    /// `part` per `part + whole`, for a ratio whose counted part never reaches `whole`.
    pub const fn ratio_of_sum(part: Counter, whole: Counter) -> Self {
        Self::Ratio {
            part,
            whole,
            whole_adds_part: true,
            scale: 1.0,
        }
    }

    /// A ratio of seconds read as milliseconds.
    pub const fn in_ms(self) -> Self {
        match self {
            Self::Ratio {
                part,
                whole,
                whole_adds_part,
                ..
            } => Self::Ratio {
                part,
                whole,
                whole_adds_part,
                scale: 1000.0,
            },
            other => other,
        }
    }

    /// A histogram's mean per interval, ms.
    pub const fn mean(of: Counter) -> Self {
        Self::Histogram { of, quantile: None }
    }

    /// A histogram's p99 per interval, ms.
    pub const fn p99(of: Counter) -> Self {
        Self::Histogram {
            of,
            quantile: Some(0.99),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matchers_name_one_value_exactly_and_several_as_a_regex() {
        assert_eq!(Counter::of("m").matchers(), "");
        assert_eq!(
            Counter::only("m", "op", &["write"]).matchers(),
            "op=\"write\","
        );
        assert_eq!(
            Counter::only("m", "reason", &["A", "B"]).matchers(),
            "reason=~\"A|B\","
        );
    }
}
