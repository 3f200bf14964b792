//! Shaped-throughput assertions shared by the bandwidth and chain suites.

use serde_json::Value;

/// The received rate of an `iperf3 -J` run, in bits/s; None when the run's
/// JSON has no end summary (iperf3 can exit 0 without one when a stream
/// is cut short).
pub fn iperf3_received_bps(json: &Value) -> Option<f64> {
    json.pointer("/end/sum_received/bits_per_second")
        .and_then(Value::as_f64)
}

/// Asserts that a shaped stream runs within 10 % of `rate` bits/s.
///
/// `measure` runs one stream and returns its rate (None: the run itself
/// failed). A rate above 110 % fails at once: the shaper let too much
/// through, which load never causes. A run below 90 %, or a failed one, is
/// repeated up to three runs in all, because on a loaded 2-core machine
/// a starved sender (or receiver) can fall behind a correct shaper; a
/// shaper that is really too strict fails all three.
#[track_caller]
pub fn assert_shaped_within_10_percent(
    rate: f64,
    what: &str,
    mut measure: impl FnMut() -> Option<f64>,
) {
    let mut runs = Vec::new();
    for _ in 0..3 {
        let measured = measure();
        eprintln!("{what}: {measured:?} bit/s for {rate:.0} configured");
        runs.push(measured);
        let Some(bps) = measured else { continue };
        let ratio = bps / rate;
        assert!(
            ratio <= 1.1,
            "{what}: {bps:.0} bit/s is {ratio:.3} x the configured {rate:.0}"
        );
        if ratio >= 0.9 {
            return;
        }
    }
    panic!("{what}: below 90 % of the configured {rate:.0} bit/s in three runs: {runs:?}");
}
