//! `autobiz fakes serve`: starts the four fakes, prints their URLs, and
//! they answer until the process is stopped.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};

use common::autobiz;
use predicates::prelude::*;

/// `GET path` over plain HTTP/1.1; returns the status line and body.
fn http_get(base: &str, path: &str) -> (String, String) {
    let addr = base.strip_prefix("http://").expect("an http URL");
    let mut s = TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.lines().next().unwrap_or_default().to_owned();
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body)
}

#[test]
fn p1_h04_fakes_serve_prints_four_loopback_urls_that_answer_health_checks() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(assert_cmd::cargo::cargo_bin("autobiz"))
        .current_dir(dir.path())
        .args(["--format", "json", "fakes", "serve"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut text = String::new();
    // The JSON document ends with a closing brace alone on its line.
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 {
            break;
        }
        text.push_str(&line);
        if line.trim_end() == "}" {
            break;
        }
    }
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    let fakes = v["fakes"].as_array().unwrap();
    let names: Vec<&str> = fakes.iter().map(|f| f["provider"].as_str().unwrap()).collect();
    assert_eq!(names, ["stripe", "shopify", "printful", "sendgrid"]);
    for f in fakes {
        let url = f["url"].as_str().unwrap();
        assert!(url.starts_with("http://127.0.0.1:"), "{url}");
        let (status, body) = http_get(url, v["health_path"].as_str().unwrap());
        assert!(status.contains("200"), "{status}");
        assert!(body.contains(f["provider"].as_str().unwrap()), "{body}");
    }
    // A provider route answers in the provider's shape (auth enforced).
    let (status, body) = http_get(fakes[1]["url"].as_str().unwrap(), "/admin/api/2024-10/orders/1001.json");
    assert!(status.contains("401"), "{status}");
    assert!(body.contains("errors"), "{body}");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn fakes_serve_refuses_a_non_loopback_bind() {
    let dir = tempfile::tempdir().unwrap();
    autobiz(dir.path())
        .args(["fakes", "serve", "--bind", "0.0.0.0"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("FAKES_BIND_NOT_LOOPBACK"));
}
