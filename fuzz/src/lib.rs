//! What several fuzz targets share: the checks every downstream protocol decoder must pass.

use slowtrace::model::downstream::{commands, recognize, Protocol, FINGERPRINT_MAX, MAX_COMMANDS};

/// Decode `data` as one client→server message of `proto` (and recognize the protocol of a
/// connection that starts with it, with a server greeting cut from its front when the first
/// byte says so). Fingerprints stay bounded and commands few, whatever the bytes.
pub fn downstream(proto: Protocol, data: &[u8]) {
    let (greeting, client) = match data.split_first() {
        Some((&n, rest)) if n & 0x80 != 0 => {
            let n = usize::from(n & 0x7f).min(rest.len());
            (Some(&rest[..n]), &rest[n..])
        }
        _ => (None, data),
    };
    let _ = recognize(client, greeting);
    let _ = recognize(data, None);
    for msg in [data, client] {
        let cmds = commands(proto, msg);
        assert!(cmds.len() <= MAX_COMMANDS, "{} commands", cmds.len());
        for c in &cmds {
            assert!(
                c.fingerprint.len() <= FINGERPRINT_MAX,
                "{} bytes: {:?}",
                c.fingerprint.len(),
                c.fingerprint
            );
        }
    }
}
