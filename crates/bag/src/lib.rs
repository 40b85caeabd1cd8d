//! rosbag2 bags without ROS: both storage formats (sqlite3 `.db3` and MCAP), single files or
//! bag directories with `metadata.yaml` (split bags are read file after file, in the order the
//! metadata lists them).
//!
//! Reading is a visit ([`Bag::visit`]): each message of the wanted topics is handed to a
//! callback, in file order for MCAP and in (receive stamp, row id) order for sqlite3, which
//! is the order rosbag2's own reader plays a `.db3` back in. A damaged file stops the visit with an error that names the file,
//! after every message before the damage was delivered, so callers can report partial results.

pub mod cdr;
mod mcap_file;
mod sqlite;

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One message as stored: topic, type, receive (log) time, CDR bytes.
#[derive(Debug, Clone)]
pub struct BagMessage {
    pub topic: String,
    pub msg_type: String,
    pub log_time_ns: i64,
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    Sqlite3,
    Mcap,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    pub name: String,
    pub msg_type: String,
    pub count: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BagError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: invalid metadata.yaml: {reason}")]
    Metadata { path: PathBuf, reason: String },
    #[error("{path}: unknown storage '{id}' (supported: sqlite3, mcap)")]
    UnknownStorage { path: PathBuf, id: String },
    #[error("{path}: not a rosbag2 bag (expected a directory with metadata.yaml, or a .db3 or .mcap file)")]
    NotABag { path: PathBuf },
    #[error("{path}: damaged after {delivered} message(s): {reason}")]
    Damaged {
        path: PathBuf,
        delivered: u64,
        reason: String,
    },
    #[error("{bag}: topic '{topic}' not in the bag (topics: {available})")]
    MissingTopic {
        bag: PathBuf,
        topic: String,
        available: String,
    },
    #[error("{bag}: {reason}")]
    NoCameraTopic { bag: PathBuf, reason: String },
    #[error("{bag}: topic '{topic}' has type '{found}', expected {expected}")]
    WrongType {
        bag: PathBuf,
        topic: String,
        found: String,
        expected: String,
    },
}

/// True when `path` is read as a rosbag2 bag: a file (`.db3`, `.mcap`) or a directory with
/// `metadata.yaml`. Any other directory is an image folder. The one place this is decided.
pub fn is_bag(path: &Path) -> bool {
    path.is_file() || path.join("metadata.yaml").is_file()
}

/// An opened bag: its storage files in reading order.
#[derive(Debug, Clone)]
pub struct Bag {
    pub path: PathBuf,
    pub files: Vec<(PathBuf, Storage)>,
}

#[derive(Deserialize)]
struct MetadataFile {
    rosbag2_bagfile_information: Metadata,
}

#[derive(Deserialize)]
struct Metadata {
    storage_identifier: String,
    #[serde(default)]
    relative_file_paths: Vec<String>,
    #[serde(default)]
    compression_format: String,
}

fn storage_of_file(path: &Path) -> Option<Storage> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("db3") => Some(Storage::Sqlite3),
        Some("mcap") => Some(Storage::Mcap),
        _ => None,
    }
}

impl Bag {
    /// Opens a bag directory (with `metadata.yaml`) or a single `.db3` / `.mcap` file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, BagError> {
        let path = path.as_ref().to_path_buf();
        if path.is_file() {
            let storage =
                storage_of_file(&path).ok_or_else(|| BagError::NotABag { path: path.clone() })?;
            return Ok(Self {
                files: vec![(path.clone(), storage)],
                path,
            });
        }
        let meta_path = path.join("metadata.yaml");
        if !meta_path.is_file() {
            return Err(BagError::NotABag { path });
        }
        let text = std::fs::read_to_string(&meta_path).map_err(|source| BagError::Io {
            path: meta_path.clone(),
            source,
        })?;
        let meta: MetadataFile = serde_yaml::from_str(&text).map_err(|e| BagError::Metadata {
            path: meta_path.clone(),
            reason: e.to_string(),
        })?;
        let meta = meta.rosbag2_bagfile_information;
        let storage = match meta.storage_identifier.as_str() {
            "sqlite3" => Storage::Sqlite3,
            "mcap" => Storage::Mcap,
            other => {
                return Err(BagError::UnknownStorage {
                    path: meta_path,
                    id: other.to_string(),
                })
            }
        };
        if !meta.compression_format.is_empty() {
            let reason = format!("bag-level compression '{}' is not supported; decompress the bag first (MCAP chunk compression is fine)", meta.compression_format);
            return Err(BagError::Metadata {
                path: meta_path,
                reason,
            });
        }
        if meta.relative_file_paths.is_empty() {
            return Err(BagError::Metadata {
                path: meta_path,
                reason: "relative_file_paths is empty".into(),
            });
        }
        let files = meta
            .relative_file_paths
            .iter()
            .map(|f| (path.join(f), storage))
            .collect();
        Ok(Self { path, files })
    }

    /// Topics with their types and message counts, over all files.
    pub fn topics(&self) -> Result<Vec<TopicInfo>, BagError> {
        let mut all: BTreeMap<String, TopicInfo> = BTreeMap::new();
        for (file, storage) in &self.files {
            let topics = match storage {
                Storage::Sqlite3 => sqlite::topics(file)?,
                Storage::Mcap => mcap_file::topics(file)?,
            };
            for t in topics {
                all.entry(t.name.clone())
                    .and_modify(|e| e.count += t.count)
                    .or_insert(t);
            }
        }
        Ok(all.into_values().collect())
    }

    /// Hands every message on `topics` to `f`, file by file in time order. Returns how many
    /// were delivered, or the first damage found (after delivering what came before it).
    pub fn visit(&self, topics: &[&str], f: &mut dyn FnMut(BagMessage)) -> Result<u64, BagError> {
        let mut delivered = 0;
        for (file, storage) in &self.files {
            let mut count = |m: BagMessage| {
                delivered += 1;
                f(m)
            };
            let result = match storage {
                Storage::Sqlite3 => sqlite::visit(file, topics, &mut count),
                Storage::Mcap => mcap_file::visit(file, topics, &mut count),
            };
            // Report damage with the count over the whole (split) bag, not just this file.
            result.map_err(|e| match e {
                BagError::Damaged { path, reason, .. } => BagError::Damaged {
                    path,
                    delivered,
                    reason,
                },
                other => other,
            })?;
        }
        Ok(delivered)
    }

    /// Checks that `topic` exists and has one of the `types`; returns its type.
    pub fn check_topic(&self, topic: &str, types: &[&str]) -> Result<String, BagError> {
        let topics = self.topics()?;
        let t = topics
            .iter()
            .find(|t| t.name == topic)
            .ok_or_else(|| BagError::MissingTopic {
                bag: self.path.clone(),
                topic: topic.to_string(),
                available: topics
                    .iter()
                    .map(|t| format!("{} [{}]", t.name, t.msg_type))
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        if !types.contains(&t.msg_type.as_str()) {
            return Err(BagError::WrongType {
                bag: self.path.clone(),
                topic: topic.into(),
                found: t.msg_type.clone(),
                expected: types.join(" or "),
            });
        }
        Ok(t.msg_type.clone())
    }
}

impl TopicInfo {
    /// A camera topic: sensor_msgs Image or CompressedImage.
    pub fn is_camera(&self) -> bool {
        self.msg_type == IMAGE || self.msg_type == COMPRESSED_IMAGE
    }
}

impl Bag {
    /// The camera topic to read and its type: `wanted` if given (checked), otherwise the bag's
    /// only Image / CompressedImage topic.
    pub fn camera_topic(&self, wanted: Option<&str>) -> Result<(String, String), BagError> {
        if let Some(t) = wanted {
            return Ok((
                t.to_string(),
                self.check_topic(t, &[IMAGE, COMPRESSED_IMAGE])?,
            ));
        }
        let cameras: Vec<TopicInfo> = self
            .topics()?
            .into_iter()
            .filter(TopicInfo::is_camera)
            .collect();
        match cameras.as_slice() {
            [one] => Ok((one.name.clone(), one.msg_type.clone())),
            [] => Err(BagError::NoCameraTopic {
                bag: self.path.clone(),
                reason: "no sensor_msgs Image or CompressedImage topic".into(),
            }),
            many => Err(BagError::NoCameraTopic {
                bag: self.path.clone(),
                reason: format!(
                    "several image topics ({}); choose one with --topic",
                    many.iter()
                        .map(|t| t.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }),
        }
    }
}

pub const IMAGE: &str = "sensor_msgs/msg/Image";
pub const COMPRESSED_IMAGE: &str = "sensor_msgs/msg/CompressedImage";
pub const BOOL: &str = "std_msgs/msg/Bool";
