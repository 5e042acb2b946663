//! Figure 2: intake with and without the subscriptions watching.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::report::{self, Row};
use crate::server::cpu_us;
use crate::stats::{is_success, latency_summary, print_first_error, Tally};
use crate::Ctx;

use super::changes::settle;
use super::{intake, intake_requests, partner_call, set_all, Hooks, Sub, QUANTILES, SUBS};

/// Intake with the subscriptions watching against the same intake with them off, alternated
/// (off, on, on, off), with the server's CPU time per message of each.
pub(super) async fn intake_ratio(
    ctx: &Arc<Ctx>,
    token: &str,
    subs: &[Sub],
    hooks: &Hooks,
    conns: usize,
    duration: Duration,
    pid: Option<u32>,
) -> Result<(), String> {
    set_all(ctx, token, subs, json!({"active": false})).await?;
    // Watching intake means watching for new transmissions.
    for s in subs {
        let (status, v) = partner_call(
            ctx,
            &s.key,
            "PATCH",
            &format!("/api/v1/subscriptions/{}", s.id),
            &json!({"events": ["message.status", "transmission.created"]}),
        )
        .await?;
        if !is_success(status) {
            return Err(format!("events of {}: {status} {v}", s.code));
        }
    }
    let reqs = intake_requests(ctx, subs);
    let half = duration / 2;
    let (mut off, mut on) = (Tally::default(), Tally::default());
    // Server CPU time and messages stored, per kind of run.
    let (mut off_cpu, mut on_cpu) = ((0u64, 0u64), (0u64, 0u64));
    let calls_before = hooks.count();
    for watching in [false, true, true, false] {
        set_all(ctx, token, subs, json!({"active": watching})).await?;
        settle(hooks).await;
        let cpu_before = cpu_us(pid);
        let t = intake(ctx, &reqs, conns, half, None).await;
        let cpu = cpu_us(pid)
            .zip(cpu_before)
            .map(|(a, b)| a.saturating_sub(b));
        println!(
            "subscriptions intake {} {conns} conns {:.1}s: {} ok, {} err, {:.0} req/s, {}{}",
            if watching {
                "with 100 watching"
            } else {
                "without"
            },
            half.as_secs_f64(),
            t.ok,
            t.err,
            t.ok as f64 / half.as_secs_f64(),
            latency_summary(t.lat.clone(), &QUANTILES, true),
            cpu.map_or(String::new(), |c| format!(
                ", server CPU {:.0} µs/message",
                c as f64 / t.created.max(1) as f64
            )),
        );
        print_first_error(&t.first_err);
        if let Some(c) = cpu {
            let slot = if watching { &mut on_cpu } else { &mut off_cpu };
            slot.0 += c;
            slot.1 += t.created;
        }
        if watching {
            on.merge(t);
        } else {
            off.merge(t);
        }
    }
    settle(hooks).await;
    let (on_rate, off_rate) = (
        on.ok as f64 / duration.as_secs_f64(),
        off.ok as f64 / duration.as_secs_f64(),
    );
    let per_message = |(us, n): (u64, u64)| (n > 0 && us > 0).then(|| us as f64 / n as f64);
    report::record(
        Row::new(format!(
            "intake with {SUBS} subscriptions watching, {conns} connections"
        ))
        .rate(on_rate, "msg/s")
        .latency(&on.lat)
        .messages(on.created)
        .cpu_per_message(per_message(on_cpu))
        .note(format!(
            "alternated with intake unwatched: {off_rate:.0} msg/s, CPU per message {}",
            per_message(off_cpu).map_or("n/a".into(), |us| format!("{:.3} ms", us / 1000.0))
        )),
        report::mark(),
    );
    println!(
        "subscriptions intake with 100 subscriptions watching {on_rate:.0} req/s ({}), without \
         {off_rate:.0} req/s ({}): {:.0} %; {} calls made for the intake watched",
        latency_summary(on.lat, &QUANTILES, false),
        latency_summary(off.lat, &QUANTILES, false),
        if off_rate > 0.0 {
            100.0 * on_rate / off_rate
        } else {
            0.0
        },
        hooks.count() - calls_before,
    );
    if off_cpu.1 > 0 && on_cpu.1 > 0 {
        let per = |(us, n): (u64, u64)| us as f64 / n as f64;
        println!(
            "subscriptions server CPU per message (warm-up included) with 100 watching {:.0} µs, \
             without {:.0} µs: {:+.0} %",
            per(on_cpu),
            per(off_cpu),
            100.0 * (per(on_cpu) / per(off_cpu) - 1.0)
        );
    }
    Ok(())
}
