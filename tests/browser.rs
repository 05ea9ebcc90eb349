//! A real browser uses the demo page: headless Chromium (driven over the DevTools protocol)
//! opens the chat page twice, both pages join one room, one sends, the other receives —
//! through the gateway and the demo backend process.
//!
//! Needs Debian's `chromium` (tools/test.sh installs it). Without it the test is skipped with
//! a message, except under CI=true, where it fails.

mod common;
use common::*;
mod cdp;

#[test]
fn two_browser_pages_chat_through_the_backend() {
    let Some(binary) = cdp::chromium_or_skip() else {
        return;
    };
    let g = Gw::start_demo();
    let admin = g.admin.expect("admin address");
    let mut browser = cdp::Browser::start(&binary, &[]);

    let page_url = format!("http://{admin}/");
    let sessions: Vec<String> = (0..2).map(|_| browser.open(&page_url)).collect();
    let cdp = &mut browser.cdp;
    for (i, s) in sessions.iter().enumerate() {
        cdp.wait_true(
            s,
            "document.readyState === 'complete' && !!document.getElementById('join')",
            "page load",
        );
        cdp.eval(
            s,
            &format!(
                "document.getElementById('room').value = 'browsers'; document.getElementById('nick').value = 'p{i}'; document.getElementById('join').requestSubmit(); true"
            ),
        );
        cdp.wait_true(
            s,
            "document.body.dataset.state === 'joined'",
            "joining the room",
        );
    }
    cdp.eval(
        &sessions[0],
        "document.getElementById('text').value = 'hello from page 0'; document.getElementById('send').requestSubmit(); true",
    );
    cdp.wait_true(
        &sessions[1],
        "document.getElementById('log').textContent.includes('p0: hello from page 0')",
        "the message on page 1",
    );
    // The sender sees its own message too (it is a room member).
    cdp.wait_true(
        &sessions[0],
        "document.getElementById('log').textContent.includes('p0: hello from page 0')",
        "the message on page 0",
    );
}
