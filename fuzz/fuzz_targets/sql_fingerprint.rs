//! The SQL fingerprinter (model/downstream/sql.rs): any text, either dialect, cut or not.
#![no_main]

use libfuzzer_sys::fuzz_target;
use slowtrace::model::downstream::{
    sql::{fingerprint, Dialect},
    FINGERPRINT_MAX,
};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let dialect = if flags & 1 == 0 {
        Dialect::Postgres
    } else {
        Dialect::Mysql
    };
    let sql = String::from_utf8_lossy(rest);
    let fp = fingerprint(&sql, dialect, flags & 2 != 0);
    assert!(fp.len() <= FINGERPRINT_MAX, "{} bytes: {fp:?}", fp.len());
    // A fingerprint is a statement too: fingerprinting it again must also stay bounded.
    let again = fingerprint(&fp, dialect, false);
    assert!(
        again.len() <= FINGERPRINT_MAX,
        "{} bytes: {again:?}",
        again.len()
    );
});
