//! Backfills split over machines (issue 14 §3) against the fake cluster: `ingest --shard I/N`
//! over one fixture folder gives disjoint shards whose union is the whole, each shard's rerun
//! sends nothing, `--files-from` takes lists from a file and from standard input (a missing
//! entry is a failure, not a crash), and `ingest --report` merges the shards' failures files.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::es_ingest::{failure_lines, id_of, sample_folder};
use crate::fake_es::{sightline, sightline_with_stdin, FakeEs, Run};

const INDEX: &str = "photos";
const SHARDS: u64 = 3;

/// The documented rule, computed here independently: the first 64 bits of the SHA-256, mod N.
fn shard_of(path: &Path) -> u64 {
    u64::from_str_radix(&id_of(path)[..16], 16).unwrap() % SHARDS
}

async fn cluster() -> FakeEs {
    let fake = FakeEs::start("8.15.0").await;
    fake.seed_pipeline("sightline-photos", json!({"processors": []}));
    fake
}

fn ingest_args<'a>(fake: &'a FakeEs, failures: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "ingest",
        "--es",
        &fake.url,
        "--index",
        INDEX,
        "--via-pipeline",
        "--failures",
        failures,
        "--no-progress",
    ];
    args.extend_from_slice(extra);
    args
}

/// `_id`s of the documents sent in `_bulk` requests since the last `clear_requests`.
fn bulk_ids(fake: &FakeEs) -> Vec<String> {
    fake.requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/_bulk"))
        .flat_map(|r| r.ndjson())
        .filter_map(|line| line["create"]["_id"].as_str().map(str::to_owned))
        .collect()
}

fn failed_paths(failures: &Path) -> BTreeSet<String> {
    failure_lines(failures)
        .iter()
        .map(|record| record["path"].as_str().unwrap().to_owned())
        .collect()
}

fn shown(paths: &[PathBuf]) -> BTreeSet<String> {
    paths.iter().map(|p| p.display().to_string()).collect()
}

#[tokio::test]
async fn shards_are_disjoint_their_union_is_the_whole_and_a_rerun_sends_nothing() {
    let fake = cluster().await;
    let (dir, good, broken) = sample_folder();
    let folder = dir.path().display().to_string();
    let out = tempfile::tempdir().unwrap();
    let mut all_sent = Vec::new();
    let mut all_failed = BTreeSet::new();
    for i in 0..SHARDS {
        let shard = format!("{i}/{SHARDS}");
        let failures = out.path().join(format!("failures-{i}-of-{SHARDS}.jsonl"));
        let failures_arg = failures.display().to_string();
        fake.clear_requests();
        let run = sightline(&ingest_args(
            &fake,
            &failures_arg,
            &[&folder, "--shard", &shard, "--bulk-size", "2"],
        ))
        .await;

        let mine = |paths: &[PathBuf]| -> Vec<PathBuf> {
            paths.iter().filter(|p| shard_of(p) == i).cloned().collect()
        };
        let (my_good, my_broken) = (mine(&good), mine(&broken));
        // The sample folder gives every shard of 3 something to index and something broken.
        assert!(
            !my_good.is_empty() && !my_broken.is_empty(),
            "shard {shard}"
        );
        run.expect_code(1);

        let mut sent = bulk_ids(&fake);
        sent.sort();
        let mut expected: Vec<String> = my_good.iter().map(|p| id_of(p)).collect();
        expected.sort();
        assert_eq!(sent, expected, "shard {shard} sends exactly its own images");
        assert_eq!(failed_paths(&failures), shown(&my_broken), "shard {shard}");
        // The whole folder is read: 6 good, 1 copy, the broken ones; the shard's share is named.
        let found = good.len() + 1 + broken.len();
        let in_shard = found
            - good
                .iter()
                .chain(&broken)
                .filter(|p| shard_of(p) != i)
                .count()
            - usize::from(shard_of(&good[0]) != i);
        assert!(
            run.stdout.starts_with(&format!(
                "{found} images found, {in_shard} in shard {shard}: {} indexed,",
                my_good.len()
            )),
            "{}",
            run.stdout
        );
        all_sent.extend(sent);
        all_failed.extend(failed_paths(&failures));

        // A second run of the same shard finds its documents and sends no `_bulk`.
        fake.clear_requests();
        let again = sightline(&ingest_args(
            &fake,
            &failures_arg,
            &[&folder, "--shard", &shard],
        ))
        .await;
        again.expect_code(1);
        assert_eq!(fake.count("POST", "/_bulk"), 0, "rerun of shard {shard}");
        assert!(
            again.stdout.contains(&format!(
                ": 0 indexed, {} already in {INDEX},",
                my_good.len()
            )),
            "{}",
            again.stdout
        );
    }
    // Disjoint (no id sent twice) and whole (every good image, every broken file).
    let sent_set: BTreeSet<String> = all_sent.iter().cloned().collect();
    assert_eq!(
        sent_set.len(),
        all_sent.len(),
        "an image was sent by two shards"
    );
    let every: BTreeSet<String> = good.iter().map(|p| id_of(p)).collect();
    assert_eq!(sent_set, every);
    assert_eq!(
        fake.docs(INDEX).keys().cloned().collect::<BTreeSet<_>>(),
        every
    );
    assert_eq!(all_failed, shown(&broken));

    // The report merges the three failures files into one summary.
    let files: Vec<String> = (0..SHARDS)
        .map(|i| {
            out.path()
                .join(format!("failures-{i}-of-{SHARDS}.jsonl"))
                .display()
                .to_string()
        })
        .collect();
    let mut args = vec!["ingest", "--report"];
    args.extend(files.iter().map(String::as_str));
    let report = sightline(&args).await;
    report.expect_code(1);
    let lines: Vec<&str> = report.stdout.lines().collect();
    assert_eq!(
        lines[0],
        format!(
            "3 failures files, {n} lines: {n} files failed",
            n = broken.len()
        )
    );
    let listed: BTreeSet<String> = lines
        .iter()
        .skip_while(|line| **line != "failed files:")
        .skip(1)
        .map(|line| line.trim_start().split('\t').next().unwrap().to_owned())
        .collect();
    assert_eq!(listed, shown(&broken));
    let counted: usize = lines
        .iter()
        .skip(2)
        .take_while(|line| **line != "failed files:")
        .map(|line| {
            line.split_whitespace()
                .next()
                .unwrap()
                .parse::<usize>()
                .unwrap()
        })
        .sum();
    assert_eq!(counted, broken.len(), "{}", report.stdout);
}

#[tokio::test]
async fn shard_numbers_count_from_zero_and_out_of_range_is_refused() {
    let run = sightline(&["ingest", "some-folder", "--shard", "3/3"]).await;
    run.expect_code(2);
    assert!(
        run.stderr.contains(
            "invalid value '3/3' for '--shard <I/N>': I counts from 0, so the shards of 3 are 0/3 to 2/3"
        ),
        "{}",
        run.stderr
    );
}

/// The files of `paths`, with a missing one and blank lines, as a list relative to nothing:
/// absolute, so the test does not depend on the runner's directory.
fn list_of(paths: &[PathBuf], missing: &Path) -> String {
    let mut list = String::from("\n");
    for path in paths {
        list.push_str(&format!("{}\n\n", path.display()));
    }
    list.push_str(&format!("{}\n", missing.display()));
    list
}

fn expect_listed_run(
    fake: &FakeEs,
    run: &Run,
    listed: &[PathBuf],
    failures: &Path,
    missing: &Path,
) {
    run.expect_code(1);
    let mut sent = bulk_ids(fake);
    sent.sort();
    let mut expected: Vec<String> = listed.iter().map(|p| id_of(p)).collect();
    expected.sort();
    assert_eq!(
        sent, expected,
        "exactly the listed images, no folder walked"
    );
    let records: Vec<Value> = failure_lines(failures);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["path"], missing.display().to_string());
    assert_eq!(records[0]["stage"], "walk");
    assert!(
        records[0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("cannot open:"),
        "{records:?}"
    );
}

#[tokio::test]
async fn files_from_a_file_and_from_stdin_take_only_the_listed_paths() {
    let (dir, good, _broken) = sample_folder();
    let missing = dir.path().join("not-there.jpg");
    let out = tempfile::tempdir().unwrap();

    // From a file: the first three good images.
    let fake = cluster().await;
    let list = out.path().join("list.txt");
    std::fs::write(&list, list_of(&good[..3], &missing)).unwrap();
    let failures = out.path().join("from-file.jsonl");
    let (list_arg, failures_arg) = (list.display().to_string(), failures.display().to_string());
    let run = sightline(&ingest_args(
        &fake,
        &failures_arg,
        &["--files-from", &list_arg],
    ))
    .await;
    expect_listed_run(&fake, &run, &good[..3], &failures, &missing);

    // From standard input: the other three, on a fresh cluster.
    let fake = cluster().await;
    let failures = out.path().join("from-stdin.jsonl");
    let failures_arg = failures.display().to_string();
    let run = sightline_with_stdin(
        &ingest_args(&fake, &failures_arg, &["--files-from", "-"]),
        &list_of(&good[3..], &missing),
    )
    .await;
    expect_listed_run(&fake, &run, &good[3..], &failures, &missing);

    // A list that cannot be opened stops the run before anything is sent, naming it.
    let run = sightline(&ingest_args(
        &fake,
        &failures_arg,
        &["--files-from", &missing.display().to_string()],
    ))
    .await;
    run.expect_code(2);
    assert!(
        run.stderr.contains(&format!(
            "cannot open the --files-from list {}",
            missing.display()
        )),
        "{}",
        run.stderr
    );
}
