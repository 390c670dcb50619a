//! Retention: which snapshots a grandfather-father-son policy keeps.
//!
//! A pure function of (snapshots, policy, now, time zone), with restic's
//! semantics: walking snapshots from newest to oldest, each
//! `--keep-{last,hourly,daily,weekly,monthly,yearly} N` rule keeps the first
//! snapshot it meets in each new period until it has kept N (so "the newest
//! snapshot in each of the last N periods that have snapshots"; weeks are
//! ISO weeks). One snapshot may satisfy several rules. `--keep-within`
//! keeps everything within that span (anchored as below), and `--keep-tag` keeps
//! tagged snapshots. Periods are calendar periods in the given time zone:
//! across a daylight-saving change a day is still one day, and the repeated
//! hour of a fall-back counts as one hour.
//!
//! Time is judged against `now`: a snapshot dated more than
//! [`CLOCK_SKEW_ALLOWANCE`] after `now` (a clock far ahead, or a snapshot
//! planted by someone holding the passphrase) is kept, marked suspicious,
//! and takes no part in any rule, so future-dated snapshots can never use
//! up the keep slots of real ones. `--keep-within` is measured from `now`,
//! or from the newest real snapshot when that is older (a source that
//! stopped backing up keeps its last span, and a local clock running ahead
//! does not empty the window); restic measures it from the newest snapshot,
//! which a future-dated one would move arbitrarily far.
//!
//! Snapshots tagged [`crate::dump::INCOMPLETE_TAG`] (dumps that failed
//! their completeness check, stored on request) take no part in any rule
//! either, and are kept only by `--keep-tag`.

use jiff::tz::TimeZone;
use jiff::{Span, Timestamp, Zoned};

use crate::error::{Error, Result};
pub(crate) use crate::snapshot::CLOCK_SKEW_ALLOWANCE;

/// A retention policy. Rules left at `None` do not apply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// Keep the N newest snapshots.
    pub last: Option<u32>,
    /// Keep the newest snapshot of each of the last N hours that have one.
    pub hourly: Option<u32>,
    /// … days.
    pub daily: Option<u32>,
    /// … ISO weeks.
    pub weekly: Option<u32>,
    /// … months.
    pub monthly: Option<u32>,
    /// … years.
    pub yearly: Option<u32>,
    /// Keep every snapshot within this span of now (or of the newest real
    /// snapshot, if that is older).
    pub within: Option<Within>,
    /// Keep every snapshot carrying one of these tags.
    pub tags: Vec<String>,
}

impl Policy {
    /// True when no rule is set, so the policy would keep nothing.
    pub fn is_empty(&self) -> bool {
        self.rules().iter().all(|(_, n)| n.is_none())
            && self.within.is_none()
            && self.tags.is_empty()
    }

    fn rules(&self) -> [(Rule, Option<u32>); 6] {
        [
            (Rule::Last, self.last),
            (Rule::Hourly, self.hourly),
            (Rule::Daily, self.daily),
            (Rule::Weekly, self.weekly),
            (Rule::Monthly, self.monthly),
            (Rule::Yearly, self.yearly),
        ]
    }
}

/// A `--keep-within` span such as `7d`, `2w`, `1y6m` or `36h`.
#[derive(Clone, Debug)]
pub struct Within {
    text: String,
    span: Span,
}

impl std::str::FromStr for Within {
    type Err = Error;

    /// Parses digits followed by a unit, repeated: `y` years, `m` months,
    /// `w` weeks, `d` days, `h` hours (restic's units, plus weeks).
    fn from_str(text: &str) -> Result<Within> {
        let bad = || {
            Error::InvalidArgument(format!(
                "{text:?} is not a duration: use numbers with units y, m, w, d, h, such as 7d or 1y6m"
            ))
        };
        let mut span = Span::new();
        let mut digits = String::new();
        let mut any = false;
        for c in text.chars() {
            if c.is_ascii_digit() {
                digits.push(c);
                continue;
            }
            let n: i64 = digits.parse().map_err(|_| bad())?;
            digits.clear();
            span = match c {
                'y' => span.try_years(span.get_years() as i64 + n),
                'm' => span.try_months(span.get_months() as i64 + n),
                'w' => span.try_weeks(span.get_weeks() as i64 + n),
                'd' => span.try_days(span.get_days() as i64 + n),
                'h' => span.try_hours(span.get_hours() as i64 + n),
                _ => return Err(bad()),
            }
            .map_err(|_| bad())?;
            any = true;
        }
        if !digits.is_empty() || !any {
            return Err(bad());
        }
        Ok(Within {
            text: text.to_string(),
            span,
        })
    }
}

impl Within {
    /// The moment this long before `now`, in the local time zone (so a day
    /// is a calendar day across daylight-saving changes).
    pub fn before(&self, now: Timestamp) -> Timestamp {
        now.to_zoned(jiff::tz::TimeZone::system())
            .checked_sub(self.span)
            .map(|z| z.timestamp())
            .unwrap_or(Timestamp::MIN)
    }
}

impl PartialEq for Within {
    fn eq(&self, other: &Within) -> bool {
        self.text == other.text
    }
}

impl Eq for Within {}

impl std::fmt::Display for Within {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// A calendar period as comparable numbers (year, month or week, day, hour).
type Period = (i64, i64, i64, i64);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rule {
    Last,
    Hourly,
    Daily,
    Weekly,
    Monthly,
    Yearly,
}

impl Rule {
    fn name(self) -> &'static str {
        match self {
            Rule::Last => "last",
            Rule::Hourly => "hourly",
            Rule::Daily => "daily",
            Rule::Weekly => "weekly",
            Rule::Monthly => "monthly",
            Rule::Yearly => "yearly",
        }
    }

    /// The period a local time falls in; `index` makes every snapshot its
    /// own period for `last`.
    fn period(self, local: &Zoned, index: usize) -> Period {
        let (y, m, d, h) = (
            i64::from(local.year()),
            i64::from(local.month()),
            i64::from(local.day()),
            i64::from(local.hour()),
        );
        match self {
            Rule::Last => (index as i64, 0, 0, 0),
            Rule::Hourly => (y, m, d, h),
            Rule::Daily => (y, m, d, 0),
            Rule::Weekly => {
                let week = local.date().iso_week_date();
                (i64::from(week.year()), i64::from(week.week()), 0, 0)
            }
            Rule::Monthly => (y, m, 0, 0),
            Rule::Yearly => (y, 0, 0, 0),
        }
    }
}

/// One snapshot as retention sees it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Item<'a> {
    /// When it was taken.
    pub time: Timestamp,
    /// Its tags.
    pub tags: &'a [String],
}

/// What the policy decided for one snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Decision {
    /// Keep it.
    pub keep: bool,
    /// The rules that kept it, such as `daily 3/7`, `within 30d`, `tag keep`.
    pub reasons: Vec<String>,
    /// Dated after `now` by more than the clock-skew allowance: kept, but
    /// counted toward no rule.
    pub suspicious: bool,
    /// Tagged [`crate::dump::INCOMPLETE_TAG`]: an incomplete dump stored on
    /// request. Counted toward no rule; kept only by `--keep-tag`.
    pub incomplete: bool,
}

/// Applies `policy` to one group of snapshots. Returns one decision per
/// item, in the items' order. Snapshots dated after `now` by more than
/// [`CLOCK_SKEW_ALLOWANCE`] are kept as suspicious and skipped by every rule
/// (see the module docs).
pub(crate) fn apply(
    items: &[Item<'_>],
    policy: &Policy,
    now: Timestamp,
    tz: &TimeZone,
) -> Vec<Decision> {
    let mut decisions = vec![
        Decision {
            keep: false,
            reasons: Vec::new(),
            suspicious: false,
            incomplete: false,
        };
        items.len()
    ];
    let horizon = now
        .checked_add(
            jiff::SignedDuration::try_from(CLOCK_SKEW_ALLOWANCE).expect("a few minutes fit"),
        )
        .unwrap_or(Timestamp::MAX);
    let mut order: Vec<usize> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        if item.time > horizon {
            decisions[i] = Decision {
                keep: true,
                reasons: vec!["newer than now (suspicious)".into()],
                suspicious: true,
                incomplete: false,
            };
        } else if item.tags.iter().any(|t| t == crate::dump::INCOMPLETE_TAG) {
            let decision = &mut decisions[i];
            decision.incomplete = true;
            for tag in &policy.tags {
                if item.tags.contains(tag) {
                    decision.reasons.push(format!("tag {tag}"));
                }
            }
            decision.keep = !decision.reasons.is_empty();
        } else {
            order.push(i);
        }
    }
    // Newest first; equal times keep their input order.
    order.sort_by(|&a, &b| items[b].time.cmp(&items[a].time).then(a.cmp(&b)));
    // Measured from now, or from the newest real snapshot if that is
    // older: future-dated snapshots cannot move the window (they are not
    // in `order`), and neither can a local clock that runs far ahead.
    let anchor = order.first().map_or(now, |&i| items[i].time.min(now));
    let within_start = policy.within.as_ref().map(|w| {
        anchor
            .to_zoned(tz.clone())
            .checked_sub(w.span)
            .map(|z| z.timestamp())
            .unwrap_or(Timestamp::MIN)
    });

    // Per rule: its limit, how many it kept, and the last period it kept.
    let mut rules: Vec<(Rule, u32, u32, Option<Period>)> = policy
        .rules()
        .iter()
        .filter_map(|&(rule, n)| n.map(|n| (rule, n, 0, None)))
        .collect();
    for (position, &i) in order.iter().enumerate() {
        let item = &items[i];
        let local = item.time.to_zoned(tz.clone());
        let decision = &mut decisions[i];
        for (rule, limit, used, last) in &mut rules {
            if *used >= *limit {
                continue;
            }
            let period = rule.period(&local, position);
            if *last != Some(period) {
                *used += 1;
                *last = Some(period);
                decision
                    .reasons
                    .push(format!("{} {used}/{limit}", rule.name()));
            }
        }
        if let (Some(start), Some(within)) = (within_start, &policy.within)
            && item.time >= start
        {
            decision.reasons.push(format!("within {within}"));
        }
        for tag in &policy.tags {
            if item.tags.contains(tag) {
                decision.reasons.push(format!("tag {tag}"));
            }
        }
        if item.time > now {
            decision.reasons.push("newer than now".into());
        }
        decision.keep = !decision.reasons.is_empty();
    }
    decisions
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    /// Applies `policy` to snapshots at `times` (RFC 3339, any order) and
    /// returns the kept times, newest first, with their reasons.
    fn kept(times: &[&str], policy: &Policy, tz: &TimeZone) -> Vec<(String, Vec<String>)> {
        let tags: Vec<String> = Vec::new();
        let items: Vec<Item> = times
            .iter()
            .map(|t| Item {
                time: ts(t),
                tags: &tags,
            })
            .collect();
        let now = ts("2030-01-01T00:00:00Z");
        let decisions = apply(&items, policy, now, tz);
        let mut out: Vec<(Timestamp, String, Vec<String>)> = items
            .iter()
            .zip(decisions)
            .zip(times)
            .filter(|((_, d), _)| d.keep)
            .map(|((item, d), t)| (item.time, t.to_string(), d.reasons))
            .collect();
        out.sort_by_key(|o| std::cmp::Reverse(o.0));
        out.into_iter().map(|(_, t, r)| (t, r)).collect()
    }

    fn times_of(kept: &[(String, Vec<String>)]) -> Vec<&str> {
        kept.iter().map(|(t, _)| t.as_str()).collect()
    }

    struct Case {
        name: &'static str,
        times: &'static [&'static str],
        policy: Policy,
        tz: &'static str,
        keep: &'static [&'static str],
    }

    fn daily(n: u32) -> Policy {
        Policy {
            daily: Some(n),
            ..Policy::default()
        }
    }

    #[test]
    fn table() {
        let cases = [
            Case {
                name: "daily keeps the newest of each day; a gap day does not count",
                times: &[
                    "2026-03-01T01:00:00Z",
                    "2026-03-01T23:00:00Z",
                    "2026-03-02T12:00:00Z",
                    // no snapshot on 03-03
                    "2026-03-04T05:00:00Z",
                    "2026-03-04T06:00:00Z",
                ],
                policy: daily(3),
                tz: "UTC",
                keep: &[
                    "2026-03-04T06:00:00Z",
                    "2026-03-02T12:00:00Z",
                    "2026-03-01T23:00:00Z",
                ],
            },
            Case {
                name: "day boundary is local midnight in the named zone",
                // 23:30 UTC on the 1st is 00:30 on the 2nd in Berlin (CET, +1).
                times: &["2026-02-01T22:30:00Z", "2026-02-01T23:30:00Z"],
                policy: daily(5),
                tz: "Europe/Berlin",
                keep: &["2026-02-01T23:30:00Z", "2026-02-01T22:30:00Z"],
            },
            Case {
                name: "same instants in UTC fall on one day",
                times: &["2026-02-01T22:30:00Z", "2026-02-01T23:30:00Z"],
                policy: daily(5),
                tz: "UTC",
                keep: &["2026-02-01T23:30:00Z"],
            },
            Case {
                name: "ISO weeks: Sunday and the next Monday are different weeks",
                times: &[
                    "2026-01-04T12:00:00Z", // Sunday, ISO week 2026-W01
                    "2026-01-05T12:00:00Z", // Monday, 2026-W02
                    "2026-01-06T12:00:00Z", // Tuesday, 2026-W02
                ],
                policy: Policy {
                    weekly: Some(5),
                    ..Policy::default()
                },
                tz: "UTC",
                keep: &["2026-01-06T12:00:00Z", "2026-01-04T12:00:00Z"],
            },
            Case {
                name: "ISO week spanning New Year is one week",
                times: &[
                    "2025-12-29T12:00:00Z", // Monday, ISO 2026-W01
                    "2026-01-01T12:00:00Z", // Thursday, 2026-W01
                    "2025-12-28T12:00:00Z", // Sunday, 2025-W52
                ],
                policy: Policy {
                    weekly: Some(5),
                    ..Policy::default()
                },
                tz: "UTC",
                keep: &["2026-01-01T12:00:00Z", "2025-12-28T12:00:00Z"],
            },
            Case {
                name: "year boundary: yearly keeps the last of each year",
                times: &[
                    "2024-06-01T00:00:00Z",
                    "2024-12-31T23:59:59Z",
                    "2025-01-01T00:00:00Z",
                    "2025-12-31T10:00:00Z",
                    "2026-01-01T00:00:01Z",
                ],
                policy: Policy {
                    yearly: Some(2),
                    ..Policy::default()
                },
                tz: "UTC",
                keep: &["2026-01-01T00:00:01Z", "2025-12-31T10:00:00Z"],
            },
            Case {
                name: "monthly counts months that have snapshots",
                times: &[
                    "2026-01-15T00:00:00Z",
                    "2026-01-20T00:00:00Z",
                    "2026-04-02T00:00:00Z",
                    "2026-05-30T00:00:00Z",
                ],
                policy: Policy {
                    monthly: Some(3),
                    ..Policy::default()
                },
                tz: "UTC",
                keep: &[
                    "2026-05-30T00:00:00Z",
                    "2026-04-02T00:00:00Z",
                    "2026-01-20T00:00:00Z",
                ],
            },
            Case {
                name: "spring forward: the day has 23 hours but is still one day",
                // Europe/Berlin goes from +1 to +2 at 01:00Z on 2026-03-29.
                times: &[
                    "2026-03-28T23:30:00Z", // 00:30 CET on the 29th
                    "2026-03-29T21:30:00Z", // 23:30 CEST on the 29th
                    "2026-03-29T22:30:00Z", // 00:30 CEST on the 30th
                ],
                policy: daily(5),
                tz: "Europe/Berlin",
                keep: &["2026-03-29T22:30:00Z", "2026-03-29T21:30:00Z"],
            },
            Case {
                name: "fall back: the repeated hour is one hour",
                // 2026-10-25: 02:00-03:00 local happens twice (00:xxZ CEST, 01:xxZ CET).
                times: &[
                    "2026-10-25T00:15:00Z", // 02:15 CEST
                    "2026-10-25T01:15:00Z", // 02:15 CET
                    "2026-10-25T02:15:00Z", // 03:15 CET
                ],
                policy: Policy {
                    hourly: Some(5),
                    ..Policy::default()
                },
                tz: "Europe/Berlin",
                keep: &["2026-10-25T02:15:00Z", "2026-10-25T01:15:00Z"],
            },
            Case {
                name: "the same hours are distinct in UTC",
                times: &[
                    "2026-10-25T00:15:00Z",
                    "2026-10-25T01:15:00Z",
                    "2026-10-25T02:15:00Z",
                ],
                policy: Policy {
                    hourly: Some(5),
                    ..Policy::default()
                },
                tz: "UTC",
                keep: &[
                    "2026-10-25T02:15:00Z",
                    "2026-10-25T01:15:00Z",
                    "2026-10-25T00:15:00Z",
                ],
            },
            Case {
                name: "last keeps the N newest regardless of period",
                times: &[
                    "2026-01-01T00:00:00Z",
                    "2026-01-01T00:00:01Z",
                    "2026-01-01T00:00:02Z",
                ],
                policy: Policy {
                    last: Some(2),
                    ..Policy::default()
                },
                tz: "UTC",
                keep: &["2026-01-01T00:00:02Z", "2026-01-01T00:00:01Z"],
            },
            Case {
                name: "within is measured from now when a snapshot is that recent",
                times: &[
                    "2029-12-25T00:00:00Z",
                    "2029-12-28T23:00:00Z",
                    "2029-12-29T00:00:00Z",
                    "2029-12-31T00:00:00Z",
                    "2029-12-31T12:00:00Z",
                    "2030-01-01T00:00:00Z",
                ],
                policy: Policy {
                    within: Some("3d".parse().unwrap()),
                    ..Policy::default()
                },
                tz: "UTC",
                keep: &[
                    "2030-01-01T00:00:00Z",
                    "2029-12-31T12:00:00Z",
                    "2029-12-31T00:00:00Z",
                    "2029-12-29T00:00:00Z",
                ],
            },
            Case {
                name: "within is measured from the newest snapshot when now is far past it \
                       (a source that stopped, or a clock running ahead)",
                times: &[
                    "2026-01-01T00:00:00Z",
                    "2026-01-05T00:00:00Z",
                    "2026-01-07T00:00:00Z",
                    "2026-01-08T00:00:00Z",
                ],
                policy: Policy {
                    within: Some("3d".parse().unwrap()),
                    ..Policy::default()
                },
                tz: "UTC",
                keep: &[
                    "2026-01-08T00:00:00Z",
                    "2026-01-07T00:00:00Z",
                    "2026-01-05T00:00:00Z",
                ],
            },
        ];
        for case in cases {
            let tz = TimeZone::get(case.tz).unwrap();
            let got = kept(case.times, &case.policy, &tz);
            assert_eq!(times_of(&got), case.keep, "{}", case.name);
        }
    }

    #[test]
    fn one_snapshot_satisfies_several_rules_and_reasons_count_up() {
        let times = [
            "2026-11-20T03:00:00Z",
            "2026-11-21T03:00:00Z",
            "2026-11-22T03:00:00Z",
        ];
        let policy = Policy {
            daily: Some(7),
            weekly: Some(4),
            monthly: Some(12),
            ..Policy::default()
        };
        let got = kept(&times, &policy, &TimeZone::UTC);
        assert_eq!(
            got,
            vec![
                (
                    "2026-11-22T03:00:00Z".to_string(),
                    vec![
                        "daily 1/7".to_string(),
                        "weekly 1/4".into(),
                        "monthly 1/12".into()
                    ]
                ),
                // Sat 21st is in the same ISO week (W47) as Sun 22nd.
                (
                    "2026-11-21T03:00:00Z".to_string(),
                    vec!["daily 2/7".to_string()]
                ),
                (
                    "2026-11-20T03:00:00Z".to_string(),
                    vec!["daily 3/7".to_string()]
                ),
            ]
        );
    }

    #[test]
    fn a_gfs_policy_over_a_year_of_dailies_keeps_the_expected_count() {
        // 365 nightly snapshots at 02:00 Berlin time through 2026.
        let tz = TimeZone::get("Europe/Berlin").unwrap();
        let start: Zoned = "2026-01-01T02:00[Europe/Berlin]".parse().unwrap();
        let owned: Vec<String> = (0..365)
            .map(|d| {
                start
                    .checked_add(Span::new().days(d))
                    .unwrap()
                    .timestamp()
                    .to_string()
            })
            .collect();
        let times: Vec<&str> = owned.iter().map(String::as_str).collect();
        let policy = Policy {
            daily: Some(7),
            weekly: Some(4),
            monthly: Some(12),
            ..Policy::default()
        };
        let got = kept(&times, &policy, &tz);
        // 7 dailies (Dec 25-31), weeklies reach back to 4 distinct ISO weeks
        // (2 of them already held by dailies), 12 monthly month-ends.
        let got_times = times_of(&got);
        assert_eq!(got_times.first(), Some(&owned[364].as_str()));
        assert_eq!(got.len(), 7 + 2 + 11, "{got:#?}");
        // Every month-end of 2026 is kept.
        for month in 1..=12 {
            let last = start
                .with()
                .month(month)
                .day(1)
                .build()
                .unwrap()
                .checked_add(Span::new().months(1))
                .unwrap()
                .checked_sub(Span::new().days(1))
                .unwrap()
                .timestamp()
                .to_string();
            assert!(got_times.contains(&last.as_str()), "month {month}: {last}");
        }
    }

    #[test]
    fn tags_keep_and_future_snapshots_are_kept() {
        let keep = vec!["keep".to_string()];
        let none: Vec<String> = vec![];
        let items = [
            Item {
                time: ts("2026-01-01T00:00:00Z"),
                tags: &keep,
            },
            Item {
                time: ts("2026-01-02T00:00:00Z"),
                tags: &none,
            },
            Item {
                time: ts("2031-01-01T00:00:00Z"),
                tags: &none,
            },
        ];
        let policy = Policy {
            tags: keep.clone(),
            ..Policy::default()
        };
        let d = apply(&items, &policy, ts("2030-01-01T00:00:00Z"), &TimeZone::UTC);
        assert_eq!(d[0].reasons, vec!["tag keep".to_string()]);
        assert!(!d[1].keep);
        assert_eq!(
            d[2].reasons,
            vec!["newer than now (suspicious)".to_string()]
        );
        assert!(d[2].suspicious);
    }

    #[test]
    fn incomplete_dumps_take_no_keep_slot_and_go_unless_a_tag_keeps_them() {
        let now = ts("2026-03-10T12:00:00Z");
        let incomplete = vec![crate::dump::INCOMPLETE_TAG.to_string()];
        let none: Vec<String> = Vec::new();
        let items = [
            Item {
                time: ts("2026-03-10T02:00:00Z"),
                tags: &incomplete,
            },
            Item {
                time: ts("2026-03-09T02:00:00Z"),
                tags: &none,
            },
            Item {
                time: ts("2026-03-08T02:00:00Z"),
                tags: &none,
            },
        ];
        let policy = Policy {
            daily: Some(2),
            within: Some("30d".parse().unwrap()),
            ..Policy::default()
        };
        let d = apply(&items, &policy, now, &TimeZone::UTC);
        assert!(!d[0].keep && d[0].incomplete, "{d:?}");
        assert!(
            d[1].keep && d[1].reasons.contains(&"daily 1/2".to_string()),
            "{d:?}"
        );
        assert!(
            d[2].keep && d[2].reasons.contains(&"daily 2/2".to_string()),
            "{d:?}"
        );
        let policy = Policy {
            tags: vec![crate::dump::INCOMPLETE_TAG.into()],
            ..policy
        };
        assert!(apply(&items, &policy, now, &TimeZone::UTC)[0].keep);
    }

    #[test]
    fn planted_future_snapshots_take_no_keep_slot_from_real_ones() {
        // Ten real nightly snapshots up to now, and a dozen planted ones
        // dated far ahead, the way a holder of the passphrase could.
        let none: Vec<String> = vec![];
        let now = ts("2026-12-02T12:00:00Z");
        let real: Vec<Timestamp> = (0..10)
            .map(|d| ts("2026-11-23T02:00:00Z") + jiff::SignedDuration::from_hours(24 * d))
            .collect();
        let planted: Vec<Timestamp> = (0..12)
            .map(|m| ts("2099-01-15T00:00:00Z") + jiff::SignedDuration::from_hours(24 * 31 * m))
            .collect();
        let items: Vec<Item> = planted
            .iter()
            .chain(&real)
            .map(|&time| Item { time, tags: &none })
            .collect();
        let policy = Policy {
            daily: Some(7),
            weekly: Some(4),
            monthly: Some(12),
            within: Some("30d".parse().unwrap()),
            ..Policy::default()
        };
        let d = apply(&items, &policy, now, &TimeZone::UTC);
        // Every planted one is kept and flagged; every real one is kept
        // (all are within 30 days of now), with its own daily slot.
        for (decision, item) in d.iter().zip(&items).take(planted.len()) {
            assert!(decision.keep && decision.suspicious, "{item:?}");
        }
        for (decision, item) in d.iter().zip(&items).skip(planted.len()) {
            assert!(decision.keep && !decision.suspicious, "{item:?}");
            assert!(decision.reasons.contains(&"within 30d".to_string()));
        }
        assert!(
            d[planted.len() + 9]
                .reasons
                .contains(&"daily 1/7".to_string())
        );
        // Within the allowance (a clock a little ahead) a snapshot counts.
        let near = [Item {
            time: now + jiff::SignedDuration::from_secs(60),
            tags: &none,
        }];
        let d = apply(&near, &policy, now, &TimeZone::UTC);
        assert!(!d[0].suspicious);
        assert!(d[0].reasons.contains(&"daily 1/7".to_string()));
    }

    #[test]
    fn durations_parse_and_reject() {
        for good in ["7d", "1y6m", "2w", "36h", "1y2m3w4d5h"] {
            assert!(good.parse::<Within>().is_ok(), "{good}");
        }
        for bad in ["", "7", "d", "7x", "1.5d", "-3d"] {
            assert!(bad.parse::<Within>().is_err(), "{bad}");
        }
        assert!(Policy::default().is_empty());
    }
}
