use super::*;

fn pg(sql: &str) -> String {
    fingerprint(sql, Dialect::Postgres, false)
}

fn my(sql: &str) -> String {
    fingerprint(sql, Dialect::Mysql, false)
}

#[test]
fn postgres_table() {
    let cases: &[(&str, &str)] = &[
        (
            "SELECT * FROM app_author WHERE id = 42",
            "SELECT * FROM app_author WHERE id = ?",
        ),
        (
            "SELECT * FROM app_author WHERE id = $1",
            "SELECT * FROM app_author WHERE id = ?",
        ),
        (
            "SELECT \"app_author\".\"id\", \"col2\" FROM t1 WHERE x=-7.5e-3",
            "SELECT \"app_author\".\"id\", \"col2\" FROM t1 WHERE x=?",
        ),
        ("SELECT 'it''s', E'a\\'b' , x'1F'", "SELECT ?, ?, ?"),
        (
            "SELECT $$a 'b' c$$, $fn$ x $fn$ FROM t",
            "SELECT ?, ? FROM t",
        ),
        (
            "SELECT a-1, a - 1, -1, .5, 0x1F",
            "SELECT a-?, a - ?, ?, ?, ?",
        ),
        (
            "SELECT x WHERE d != -.5 AND e = +1",
            "SELECT x WHERE d != ? AND e = ?",
        ),
        (
            "SELECT '2024-01-01'::date, ARRAY[1,2], a = ANY($1)",
            "SELECT ?::date, ARRAY[?, ?], a = ANY(?)",
        ),
        (
            "SELECT * FROM t WHERE id IN (1, 2, 3) AND b NOT IN ($1,$2)",
            "SELECT * FROM t WHERE id IN (...) AND b NOT IN (...)",
        ),
        (
            "SELECT * FROM t WHERE id IN (SELECT id FROM u)",
            "SELECT * FROM t WHERE id IN (SELECT id FROM u)",
        ),
        (
            "INSERT INTO t (a, b) VALUES (1, 'x'), (2, 'y'),(3,'z') RETURNING id",
            "INSERT INTO t (a, b) VALUES (?, ?) RETURNING id",
        ),
        (
            "INSERT INTO t VALUES (1, now()), (2, now())",
            "INSERT INTO t VALUES (?, now())",
        ),
        (
            "SELECT  a ,b\n\t-- comment\n FROM /* c */ t  ;",
            "SELECT a, b FROM t ;",
        ),
        (
            "SELECT %s, %(name)s, ? FROM t WHERE a::int > 0",
            "SELECT ?, ?, ? FROM t WHERE a::int > ?",
        ),
        ("select count( * ) from t", "select count(*) from t"),
        (
            "UPDATE t SET n = n + 1 WHERE k = 'é'",
            "UPDATE t SET n = n + ? WHERE k = ?",
        ),
        ("SELECT a#b, t2.c3 FROM t2", "SELECT a#b, t2.c3 FROM t2"),
        ("BEGIN", "BEGIN"),
        ("", ""),
    ];
    for (sql, want) in cases {
        assert_eq!(pg(sql), *want, "{sql}");
    }
}

#[test]
fn mysql_table() {
    let cases: &[(&str, &str)] = &[
        (
            "SELECT `app_author`.`id` FROM `app_author` WHERE `name` = 'O\\'Brien' # c",
            "SELECT `app_author`.`id` FROM `app_author` WHERE `name` = ?",
        ),
        ("SELECT \"str\", _utf8mb4'x' , 1", "SELECT ?, ?, ?"),
        (
            "INSERT INTO t VALUE (1,2),(3,4)",
            "INSERT INTO t VALUE (?, ?)",
        ),
    ];
    for (sql, want) in cases {
        assert_eq!(my(sql), *want, "{sql}");
    }
}

#[test]
fn same_statement_same_fingerprint() {
    let a = pg("SELECT * FROM app_author WHERE id = 42");
    assert_eq!(a, pg("SELECT * FROM app_author WHERE id = 7"));
    assert_eq!(a, pg("SELECT * FROM app_author WHERE id = $1"));
    assert_eq!(
        pg("SELECT * FROM t WHERE id IN (1)"),
        pg("SELECT * FROM t WHERE id IN (1, 2, 3, 4, 5, 6)")
    );
}

#[test]
fn truncated_input() {
    let t = |s: &str| fingerprint(s, Dialect::Postgres, true);
    // The partial last word is dropped: any cut inside it gives the same fingerprint.
    assert_eq!(t("SELECT a, b FROM app_aut"), "SELECT a, b FROM…");
    assert_eq!(t("SELECT a, b FROM app_author_tab"), "SELECT a, b FROM…");
    assert_eq!(
        t("SELECT a FROM t WHERE s = 'abc"),
        "SELECT a FROM t WHERE s = ?…"
    );
    assert_eq!(
        t("SELECT a FROM t WHERE id IN (1, 2, 3"),
        "SELECT a FROM t WHERE id IN (...)…"
    );
    assert_eq!(
        t("INSERT INTO t VALUES (1, 2), (3, "),
        "INSERT INTO t VALUES (?, ?)…"
    );
    assert_eq!(t("SELECT \"unterminated"), "SELECT…");
    assert_eq!(t(""), "…");
}

#[test]
fn bounded_on_char_boundary() {
    let long = format!("SELECT {} FROM t", "é, ".repeat(200));
    for d in [Dialect::Postgres, Dialect::Mysql] {
        for cut in [false, true] {
            let f = fingerprint(&long, d, cut);
            assert!(f.len() <= FINGERPRINT_MAX, "{}", f.len());
            assert!(f.ends_with('…'));
        }
    }
}

#[test]
fn odd_input_never_panics() {
    let odd = [
        "'",
        "\"",
        "`",
        "$",
        "$$",
        "$a",
        "$a$",
        "%",
        "%(",
        "/*",
        "--",
        "-",
        "+",
        ".",
        "1e",
        "1e-",
        "E'",
        "_'",
        "IN (",
        "VALUES (",
        "VALUES ((",
        "IN ()",
        ")))",
        "\\",
        "'\\",
        "é'\\é",
    ];
    for s in odd {
        for d in [Dialect::Postgres, Dialect::Mysql] {
            for cut in [false, true] {
                let f = fingerprint(s, d, cut);
                assert!(f.len() <= FINGERPRINT_MAX);
            }
        }
    }
}
