//! The projections the hub keeps, and the one interface through which the
//! projector and replay drive them, whatever their row types.

use crate::analytics::Analytics;
use crate::balances::Balances;
use crate::invoices::{self, Invoices};
use crate::tenants::{TenantKeys, Tenants};
use crate::{LoggedEvent, Projection};
use std::collections::BTreeMap;

/// What the registered projections are cut with; the hub builds it from its
/// settings (`Limits::projection_settings`), so the projector, replay and the
/// routes that read the rows all use the same cut.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProjectionSettings {
    pub invoices: invoices::Settings,
}

/// Every projection the hub keeps, in the order replay reports them. Names are
/// unique (a test checks it): each is a row namespace and a checkpoint.
pub fn registry(settings: &ProjectionSettings) -> Vec<Box<dyn Registered>> {
    vec![
        Box::new(Balances),
        Box::new(Analytics),
        Box::new(Invoices::new(settings.invoices)),
        Box::new(Tenants),
        Box::new(TenantKeys),
    ]
}

/// A [`Projection`] with its row type hidden. Every `Projection` is one.
pub trait Registered: Send + Sync {
    /// Stored name (row namespace and checkpoint).
    fn name(&self) -> &str;
    fn row_keys(&self, event: &LoggedEvent<'_>) -> Vec<String>;
    /// No rows yet: what a rebuild starts from.
    fn empty_rows(&self) -> Box<dyn FoldedRows + '_>;
    /// Rows decoded from their stored text (key, payload), to fold a page onto.
    fn decode_rows(
        &self,
        stored: &BTreeMap<String, String>,
    ) -> Result<Box<dyn FoldedRows + '_>, CorruptRow>;
}

/// Rows of one projection in memory, decoded.
pub trait FoldedRows {
    fn fold(&mut self, events: &[LoggedEvent<'_>]);
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Every row as stored: canonical JSON text per key.
    fn encode(&self) -> BTreeMap<String, String>;
}

/// A stored row that does not decode as its projection's row type.
#[derive(Debug, thiserror::Error)]
#[error("{projection} row {key}: {reason}")]
pub struct CorruptRow {
    pub projection: String,
    pub key: String,
    pub reason: String,
}

struct Rows<'p, P: Projection> {
    projection: &'p P,
    rows: BTreeMap<String, P::Row>,
}

impl<P: Projection> FoldedRows for Rows<'_, P> {
    fn fold(&mut self, events: &[LoggedEvent<'_>]) {
        self.projection.fold(&mut self.rows, events.iter().copied());
    }

    fn len(&self) -> usize {
        self.rows.len()
    }

    fn encode(&self) -> BTreeMap<String, String> {
        crate::encode_rows::<P>(&self.rows)
    }
}

impl<P: Projection> Registered for P {
    fn name(&self) -> &str {
        Projection::name(self)
    }

    fn row_keys(&self, event: &LoggedEvent<'_>) -> Vec<String> {
        Projection::row_keys(self, event)
    }

    fn empty_rows(&self) -> Box<dyn FoldedRows + '_> {
        Box::new(Rows {
            projection: self,
            rows: BTreeMap::new(),
        })
    }

    fn decode_rows(
        &self,
        stored: &BTreeMap<String, String>,
    ) -> Result<Box<dyn FoldedRows + '_>, CorruptRow> {
        let mut rows = BTreeMap::new();
        for (key, payload) in stored {
            let row = serde_json::from_str(payload).map_err(|e| CorruptRow {
                projection: Projection::name(self).to_string(),
                key: key.clone(),
                reason: e.to_string(),
            })?;
            rows.insert(key.clone(), row);
        }
        Ok(Box::new(Rows {
            projection: self,
            rows,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_names_are_unique_and_carry_the_invoice_cut() {
        let settings = ProjectionSettings {
            invoices: invoices::Settings::new(10, 3_600),
        };
        let names: Vec<String> = registry(&settings)
            .iter()
            .map(|p| p.name().to_string())
            .collect();
        let distinct: std::collections::BTreeSet<&String> = names.iter().collect();
        assert_eq!(distinct.len(), names.len(), "{names:?}");
        assert_eq!(
            names,
            vec![
                "balances".to_string(),
                crate::analytics::NAME.to_string(),
                settings.invoices.projection_name(),
                Tenants::NAME.to_string(),
                TenantKeys::NAME.to_string(),
            ]
        );
    }

    #[test]
    fn a_row_that_does_not_decode_is_named() {
        let stored = BTreeMap::from([("t".to_string(), "not json".to_string())]);
        let Err(e) = Balances.decode_rows(&stored) else {
            panic!("garbage decoded");
        };
        assert!(e.to_string().starts_with("balances row t: "), "{e}");
    }
}
