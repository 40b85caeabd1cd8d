//! rosbag2's MCAP storage, read linearly (no summary needed, so truncated files still give
//! every message before the damage).

use super::{BagError, BagMessage, TopicInfo};
use std::collections::BTreeMap;
use std::path::Path;

fn read(path: &Path) -> Result<Vec<u8>, BagError> {
    std::fs::read(path).map_err(|source| BagError::Io {
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

fn schema_name(m: &mcap::Message<'_>) -> String {
    m.channel
        .schema
        .as_ref()
        .map(|s| s.name.clone())
        .unwrap_or_default()
}

/// Topics and message counts. A damaged file lists what comes before the damage (the visit
/// reports the damage itself), so a truncated recording can still be evaluated.
pub fn topics(path: &Path) -> Result<Vec<TopicInfo>, BagError> {
    let buf = read(path)?;
    let mut out: BTreeMap<String, TopicInfo> = BTreeMap::new();
    for m in mcap::MessageStream::new(&buf).map_err(|e| damaged(path, 0, e))? {
        let Ok(m) = m else { break };
        out.entry(m.channel.topic.clone())
            .or_insert_with(|| TopicInfo {
                name: m.channel.topic.clone(),
                msg_type: schema_name(&m),
                count: 0,
            })
            .count += 1;
    }
    Ok(out.into_values().collect())
}

pub fn visit(path: &Path, topics: &[&str], f: &mut dyn FnMut(BagMessage)) -> Result<(), BagError> {
    let buf = read(path)?;
    let mut delivered = 0u64;
    for m in mcap::MessageStream::new(&buf).map_err(|e| damaged(path, 0, e))? {
        let m = m.map_err(|e| damaged(path, delivered, e))?;
        if topics.contains(&m.channel.topic.as_str()) {
            f(BagMessage {
                topic: m.channel.topic.clone(),
                msg_type: schema_name(&m),
                log_time_ns: m.log_time as i64,
                data: m.data.into_owned(),
            });
            delivered += 1;
        }
    }
    Ok(())
}
