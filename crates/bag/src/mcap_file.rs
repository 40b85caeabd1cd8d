//! rosbag2's MCAP storage, streamed: the data section is read once, front to back, through
//! mcap's sans-io reader and a bounded buffer (about one chunk), so a drive of many GB costs no
//! more memory than a short one, and a truncated file still gives every message before the
//! damage. Topics and counts come from the file's summary section when it has one (a few
//! seeks at the end of the file), else from such a pass.

use super::{BagError, BagMessage, TopicInfo};
use mcap::records::{op, Record};
use mcap::sans_io::{LinearReadEvent, LinearReader, LinearReaderOptions};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

fn open(path: &Path) -> Result<File, BagError> {
    File::open(path).map_err(|source| BagError::Io {
        path: path.into(),
        source,
    })
}

fn damaged(path: &Path, delivered: u64, e: impl std::fmt::Display) -> BagError {
    BagError::Damaged {
        path: path.into(),
        delivered,
        reason: e.to_string(),
    }
}

/// Why a pass stopped: the file could not be read, or its content is not valid MCAP.
enum StreamError {
    Io(std::io::Error),
    Mcap(mcap::McapError),
    /// A record whose fields claim more bytes than the record holds (opcode).
    Malformed(u8),
    /// The mcap reader panicked on malformed data (its message).
    ReaderPanic(String),
}

impl std::fmt::Display for StreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(e) => e.fmt(f),
            Self::Mcap(e) => e.fmt(f),
            Self::Malformed(op) => write!(
                f,
                "MCAP record (opcode {op:#04x}) with a field longer than the record"
            ),
            Self::ReaderPanic(what) => {
                write!(f, "malformed MCAP data (the mcap reader failed: {what})")
            }
        }
    }
}

/// Whether the length-prefixed fields of a schema, channel or message record lie inside it
/// (MCAP spec: schema = id u16, name, encoding, data; channel = id u16, schema id u16, topic,
/// encoding, metadata map of key and value strings; each prefixed by a u32 byte length; a
/// message has none). mcap allocates a field's declared length before reading it; found by
/// fuzzing: a header string and a channel's metadata value that claimed 3-4 GB
/// (fuzz/regressions/mcap_bag).
fn fields_fit(opcode: u8, record: &[u8]) -> bool {
    /// Splits one u32-length-prefixed field off the front.
    fn field(b: &[u8]) -> Option<(&[u8], &[u8])> {
        let (len, rest) = b.split_first_chunk::<4>()?;
        let len = u32::from_le_bytes(*len) as usize;
        (len <= rest.len()).then(|| rest.split_at(len))
    }
    let check = || -> Option<()> {
        match opcode {
            op::SCHEMA => {
                let (_, rest) = field(record.get(2..)?)?;
                let (_, rest) = field(rest)?;
                field(rest)?;
            }
            op::CHANNEL => {
                let (_, rest) = field(record.get(4..)?)?;
                let (_, rest) = field(rest)?;
                let (mut map, _) = field(rest)?;
                while !map.is_empty() {
                    let (_, rest) = field(map)?;
                    (_, map) = field(rest)?;
                }
            }
            _ => {}
        }
        Some(())
    };
    check().is_some()
}

/// Channels and schemas seen so far in a pass, to name each message's topic and type.
#[derive(Default)]
struct Channels {
    schemas: HashMap<u16, String>,
    channels: HashMap<u16, (String, u16)>,
}

/// A message on a channel no earlier record declared (its id).
struct Undeclared(u16);

impl Channels {
    /// Records a schema or channel; for a message, its topic and type, or the id of its
    /// channel when no earlier record declared it.
    #[allow(clippy::type_complexity)]
    fn message<'r>(
        &mut self,
        record: &'r Record<'_>,
    ) -> Option<Result<(&str, &str, &'r [u8], u64), Undeclared>> {
        match record {
            Record::Schema { header, .. } => {
                self.schemas.insert(header.id, header.name.clone());
                None
            }
            Record::Channel(c) => {
                self.channels.insert(c.id, (c.topic.clone(), c.schema_id));
                None
            }
            Record::Message { header, data } => {
                let Some((topic, schema)) = self.channels.get(&header.channel_id) else {
                    return Some(Err(Undeclared(header.channel_id)));
                };
                let msg_type = self.schemas.get(schema).map_or("", String::as_str);
                Some(Ok((topic, msg_type, data, header.log_time)))
            }
            _ => None,
        }
    }
}

/// The most bytes asked of the file at once. The sans-io readers request a record's declared
/// length, which a damaged or hostile file can set to exabytes (found by fuzzing:
/// fuzz/regressions/mcap_bag); they accept shorter reads and ask again, so memory stays
/// bounded by what the file really holds.
const READ_CHUNK: usize = 1 << 20;

/// Hands every record of the file's data section to `on`, in file order.
///
/// mcap 0.26's reader panics on some malformed chunks instead of returning an error (found by
/// fuzzing: fuzz/regressions/mcap_bag/chunk_record_past_its_end); a damaged bag must be
/// reported, never crash the evaluation or the replay, so the pass runs under
/// `catch_unwind`. `on` only records what it is given, so nothing is left half-updated.
fn stream(file: &mut File, on: &mut dyn FnMut(Record<'_>)) -> Result<(), StreamError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| stream_records(file, on)))
        .unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(StreamError::ReaderPanic(what))
        })
}

/// Records larger than this are refused: no rosbag2 camera message or chunk comes near it.
const RECORD_LENGTH_LIMIT: usize = 1 << 30;

fn stream_records(file: &mut File, on: &mut dyn FnMut(Record<'_>)) -> Result<(), StreamError> {
    let mut reader = LinearReader::new_with_options(
        LinearReaderOptions::default().with_record_length_limit(RECORD_LENGTH_LIMIT),
    );
    while let Some(event) = reader.next_event() {
        match event.map_err(StreamError::Mcap)? {
            LinearReadEvent::ReadRequest(need) => {
                let n = file
                    .read(reader.insert(need.min(READ_CHUNK)))
                    .map_err(StreamError::Io)?;
                reader.notify_read(n);
            }
            // Only the records a bag reader needs, and only once their length-prefixed fields
            // fit the record: mcap allocates a field's declared length before reading it.
            LinearReadEvent::Record { opcode, data } => {
                if matches!(opcode, op::SCHEMA | op::CHANNEL | op::MESSAGE) {
                    if !fields_fit(opcode, data) {
                        return Err(StreamError::Malformed(opcode));
                    }
                    on(mcap::parse_record(opcode, data).map_err(StreamError::Mcap)?);
                }
            }
        }
    }
    Ok(())
}

/// What a bag reader needs of the summary section: schema names, channels and the per-channel
/// message counts of its statistics record.
#[derive(Default)]
struct Summary {
    channels: Channels,
    counts: Option<BTreeMap<u16, u64>>,
}

/// Summary sections larger than this are ignored (the caller scans the data instead); a
/// rosbag2 summary holds a few records per topic and per chunk.
const SUMMARY_LIMIT: u64 = 64 << 20;

/// The summary section, if the file was closed properly (rosbag2 writes one). Read here
/// rather than by mcap's summary reader, which parses every summary record and allocates
/// whatever length a damaged one declares (fuzzing: a metadata index whose name claimed
/// 4 GB); only schema, channel and statistics records are parsed, after their fields are
/// checked.
fn summary(file: &mut File) -> Option<Summary> {
    // The footer record (opcode, u64 length, summary start, summary offset start, CRC) and
    // the closing magic.
    const FOOTER: usize = 1 + 8 + 8 + 8 + 4 + 8;
    let size = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(size.checked_sub(FOOTER as u64)?))
        .ok()?;
    let mut footer = [0u8; FOOTER];
    file.read_exact(&mut footer).ok()?;
    if footer[0] != op::FOOTER || &footer[29..] != mcap::MAGIC {
        return None;
    }
    let at = |i: usize| u64::from_le_bytes(footer[i..i + 8].try_into().expect("8 bytes"));
    let (start, offsets) = (at(9), at(17));
    let end = if offsets != 0 {
        offsets
    } else {
        size - FOOTER as u64
    };
    if start == 0 || start >= end || end > size || end - start > SUMMARY_LIMIT {
        return None;
    }
    file.seek(SeekFrom::Start(start)).ok()?;
    let mut section = vec![0u8; (end - start) as usize];
    file.read_exact(&mut section).ok()?;

    let mut out = Summary::default();
    let mut rest = section.as_slice();
    while let Some((&opcode, tail)) = rest.split_first() {
        let (len, tail) = tail.split_first_chunk::<8>()?;
        let len = usize::try_from(u64::from_le_bytes(*len)).ok()?;
        if len > tail.len() {
            return None;
        }
        let (data, next) = tail.split_at(len);
        rest = next;
        match opcode {
            op::SCHEMA | op::CHANNEL if fields_fit(opcode, data) => {
                let record = mcap::parse_record(opcode, data).ok()?;
                out.channels.message(&record);
            }
            // Fixed fields (42 bytes), then the counts map (u32 byte length; fixed-size entries).
            op::STATISTICS if data.len() >= 46 => {
                let map = u32::from_le_bytes(data[42..46].try_into().expect("4 bytes")) as usize;
                if map > data.len() - 46 {
                    return None;
                }
                if let Ok(Record::Statistics(s)) = mcap::parse_record(opcode, data) {
                    out.counts = Some(s.channel_message_counts);
                }
            }
            _ => {}
        }
    }
    Some(out)
}

/// Topics and message counts. A file without a summary (a truncated recording) lists what
/// comes before the damage (the visit reports the damage itself), so it can still be evaluated;
/// with a summary the counts are the recorder's, whatever a visit later finds.
pub fn topics(path: &Path) -> Result<Vec<TopicInfo>, BagError> {
    let mut file = open(path)?;
    if let Some(t) = summary(&mut file).as_ref().and_then(topics_from_summary) {
        return Ok(t);
    }
    file.rewind().map_err(|source| BagError::Io {
        path: path.into(),
        source,
    })?;
    // Damage ends the listing, not the call.
    Ok(topics_from_pass(&mut file).0)
}

/// Topics and counts from a pass over the messages, up to any damage, and how the pass ended.
fn topics_from_pass(file: &mut File) -> (Vec<TopicInfo>, Result<(), StreamError>) {
    let mut out: BTreeMap<String, TopicInfo> = BTreeMap::new();
    let mut channels = Channels::default();
    let ended = stream(file, &mut |record| {
        if let Some(Ok((topic, msg_type, _, _))) = channels.message(&record) {
            out.entry(topic.to_string())
                .or_insert_with(|| TopicInfo {
                    name: topic.to_string(),
                    msg_type: msg_type.to_string(),
                    count: 0,
                })
                .count += 1;
        }
    });
    (out.into_values().collect(), ended)
}

/// The summary's channels and statistics; None without statistics (the caller scans instead).
fn topics_from_summary(summary: &Summary) -> Option<Vec<TopicInfo>> {
    let counts = summary.counts.as_ref()?;
    let mut out: BTreeMap<String, TopicInfo> = BTreeMap::new();
    for (id, (topic, schema)) in &summary.channels.channels {
        let count = counts.get(id).copied().unwrap_or(0);
        if count == 0 {
            continue; // a scan lists only topics with messages
        }
        let t = out.entry(topic.clone()).or_insert_with(|| TopicInfo {
            name: topic.clone(),
            msg_type: summary
                .channels
                .schemas
                .get(schema)
                .cloned()
                .unwrap_or_default(),
            count: 0,
        });
        t.count += count;
    }
    Some(out.into_values().collect())
}

/// Hands every message on `topics` to `f`, in file order, in one pass.
pub fn visit(path: &Path, topics: &[&str], f: &mut dyn FnMut(BagMessage)) -> Result<(), BagError> {
    let mut file = open(path)?;
    let mut delivered = 0u64;
    let mut channels = Channels::default();
    // Messages on a channel no earlier record declared: their topic is unknown, so they are
    // damage to report, not messages to skip unseen.
    let mut orphans: BTreeMap<u16, u64> = BTreeMap::new();
    let result = stream(&mut file, &mut |record| match channels.message(&record) {
        Some(Err(Undeclared(channel))) => *orphans.entry(channel).or_default() += 1,
        Some(Ok((topic, msg_type, data, log_time))) if topics.contains(&topic) => {
            f(BagMessage {
                topic: topic.to_string(),
                msg_type: msg_type.to_string(),
                log_time_ns: log_time as i64,
                data: data.to_vec(),
            });
            delivered += 1;
        }
        Some(Ok(_)) | None => {}
    });
    result.map_err(|e| damaged(path, delivered, e))?;
    if orphans.is_empty() {
        return Ok(());
    }
    let n: u64 = orphans.values().sum();
    let channels = orphans
        .iter()
        .map(|(channel, k)| format!("{channel} ({k})"))
        .collect::<Vec<_>>()
        .join(", ");
    let s = if orphans.len() == 1 { "" } else { "s" };
    Err(damaged(
        path,
        delivered,
        format!("{n} message(s) on channel{s} {channels}, which no channel record declares"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed sample's bags are rosbag2 MCAP files with a summary: it must list what a
    /// pass over every message finds.
    #[test]
    fn the_summary_lists_what_a_pass_finds() {
        let bags = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/sample");
        let mut checked = 0;
        for entry in std::fs::read_dir(bags).unwrap() {
            let bag = entry.unwrap().path().join("bag");
            let Some(path) = std::fs::read_dir(&bag)
                .unwrap()
                .map(|e| e.unwrap().path())
                .find(|p| p.extension().is_some_and(|x| x == "mcap"))
            else {
                continue;
            };
            let s = summary(&mut open(&path).unwrap()).expect("rosbag2 writes a summary");
            let listed = topics_from_summary(&s).expect("with statistics");
            let (passed, ended) = topics_from_pass(&mut open(&path).unwrap());
            ended.map_err(|e| e.to_string()).unwrap();
            let fields = |t: Vec<TopicInfo>| -> Vec<(String, String, u64)> {
                t.into_iter()
                    .map(|t| (t.name, t.msg_type, t.count))
                    .collect()
            };
            assert!(!passed.is_empty(), "{}", path.display());
            assert_eq!(fields(listed), fields(passed), "{}", path.display());
            checked += 1;
        }
        assert_eq!(checked, 8);
    }

    /// A message on a channel no record declared is damage, reported with the count, not a
    /// message skipped unseen. The file is written record by record (MCAP spec): magic, header,
    /// messages on channels 7, 9 and 7, data end, footer, magic.
    #[test]
    fn a_message_on_an_undeclared_channel_is_reported() {
        fn record(out: &mut Vec<u8>, opcode: u8, body: &[u8]) {
            out.push(opcode);
            out.extend((body.len() as u64).to_le_bytes());
            out.extend(body);
        }
        const MAGIC: &[u8] = b"\x89MCAP0\r\n";
        let mut f = MAGIC.to_vec();
        let mut header = vec![];
        for s in ["ros2", "hand"] {
            header.extend((s.len() as u32).to_le_bytes());
            header.extend(s.as_bytes());
        }
        record(&mut f, op::HEADER, &header);
        for channel in [7u16, 9, 7] {
            let mut message = channel.to_le_bytes().to_vec();
            message.extend(0u32.to_le_bytes());
            message.extend(1u64.to_le_bytes());
            message.extend(1u64.to_le_bytes());
            message.extend(b"data");
            record(&mut f, op::MESSAGE, &message);
        }
        record(&mut f, op::DATA_END, &0u32.to_le_bytes());
        record(&mut f, op::FOOTER, &[0u8; 20]);
        f.extend(MAGIC);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("orphan.mcap");
        std::fs::write(&path, f).unwrap();
        let mut seen = 0;
        let e = visit(&path, &["/camera/image_raw"], &mut |_| seen += 1)
            .unwrap_err()
            .to_string();
        assert_eq!(seen, 0);
        assert!(e.contains("3 message(s) on channels 7 (2), 9 (1)"), "{e}");
    }
}
