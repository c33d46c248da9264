//! FQDN selectors (to be written).
