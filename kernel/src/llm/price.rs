//! What a model call costs: per-model prices in micro-USD per 1,000 tokens,
//! prompt and completion priced apart (as every hosted model is), integer
//! arithmetic only so that sums over a run are exact.

use std::collections::BTreeMap;

/// One model's price.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ModelPrice {
    pub prompt_per_1k_micro_usd: u64,
    pub completion_per_1k_micro_usd: u64,
}

impl ModelPrice {
    /// The cost of `prompt` + `completion` tokens, each part rounded up to
    /// the next micro-dollar (a call is never free by rounding).
    pub fn cost(&self, prompt: u64, completion: u64) -> u64 {
        let part = |rate: u64, n: u64| rate.saturating_mul(n).div_ceil(1000);
        part(self.prompt_per_1k_micro_usd, prompt).saturating_add(part(self.completion_per_1k_micro_usd, completion))
    }
}

/// Prices by model name (the name the endpoint reports, then the pinned one).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PriceTable(BTreeMap<String, ModelPrice>);

impl PriceTable {
    pub fn new() -> PriceTable {
        PriceTable::default()
    }

    pub fn with(mut self, model: &str, price: ModelPrice) -> PriceTable {
        self.0.insert(model.to_owned(), price);
        self
    }

    /// The price of `model`; an unpriced model costs 0 (and says so in the
    /// call's trace detail through `priced: false`).
    pub fn get(&self, model: &str) -> Option<ModelPrice> {
        self.0.get(model).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_is_integer_and_rounds_each_part_up() {
        let p = ModelPrice { prompt_per_1k_micro_usd: 150, completion_per_1k_micro_usd: 600 };
        assert_eq!(p.cost(1000, 1000), 750);
        assert_eq!(p.cost(1, 0), 1);
        assert_eq!(p.cost(0, 0), 0);
        assert_eq!(p.cost(2000, 500), 300 + 300);
    }
}
