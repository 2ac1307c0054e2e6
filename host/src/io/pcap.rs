//! Replaying a capture through the policy (`flowgate replay`): frames are read from pcap or
//! pcapng, parsed into 5-tuples (`flowgate-wire`), judged a batch per guest call, and
//! written out: allowed frames with their VXLAN VNI rewritten to the destination VPC's,
//! ambiguous ones to their own capture, dropped ones (by the policy, or unreadable) to
//! another. Frame order is kept in every output.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use flowgate_policy::{Packet, Verdict};
use flowgate_wire::{Frame, FrameError, parse_frame, set_vni};
use pcap_file::DataLink;
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapReader, PcapWriter};
use pcap_file::pcapng::{Block, PcapNgReader};

use crate::Policy;
use crate::dataplane::{self, Counters, Judged, RestartFailed};

/// One captured frame.
#[derive(Debug, Clone)]
pub struct Record {
    /// Capture time.
    pub timestamp: Duration,
    /// Length on the wire (the capture may hold less).
    pub orig_len: u32,
    /// The bytes captured, from the Ethernet header on.
    pub data: Vec<u8>,
}

/// Why a capture could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The file could not be opened or read.
    #[error("{file}: {source}")]
    Io {
        /// The capture.
        file: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// Neither pcap nor pcapng, or broken past repair.
    #[error("{file}: {what}")]
    Format {
        /// The capture.
        file: String,
        /// What is wrong, and where.
        what: String,
    },
}

enum Inner {
    Pcap(PcapReader<BufReader<File>>),
    Ng(PcapNgReader<BufReader<File>>),
}

/// Reads the frames of a pcap or pcapng capture of Ethernet frames, told apart by their magic
/// numbers.
pub struct CaptureReader {
    inner: Inner,
    file: String,
    frames: u64,
    /// Bytes of frame data read so far (for progress).
    pub bytes: u64,
}

const PCAPNG_MAGIC: [u8; 4] = [0x0a, 0x0d, 0x0d, 0x0a];

impl CaptureReader {
    /// Opens `path`.
    pub fn open(path: &Path) -> Result<CaptureReader, CaptureError> {
        let file = path.display().to_string();
        let io = |source| CaptureError::Io {
            file: file.clone(),
            source,
        };
        let mut magic = [0u8; 4];
        File::open(path)
            .and_then(|mut f| f.read_exact(&mut magic))
            .map_err(io)?;
        let reader = BufReader::with_capacity(1 << 20, File::open(path).map_err(io)?);
        let format = |what: String| CaptureError::Format {
            file: file.clone(),
            what,
        };
        let inner = if magic == PCAPNG_MAGIC {
            Inner::Ng(
                PcapNgReader::new(reader)
                    .map_err(|e| format(format!("not a readable pcapng file: {e}")))?,
            )
        } else {
            let r = PcapReader::new(reader).map_err(|e| {
                format(format!("neither pcap nor pcapng (magic {magic:02x?}): {e}"))
            })?;
            if r.header().datalink != DataLink::ETHERNET {
                return Err(format(format!(
                    "link type {:?}: only Ethernet captures can be replayed",
                    r.header().datalink
                )));
            }
            Inner::Pcap(r)
        };
        Ok(CaptureReader {
            inner,
            file,
            frames: 0,
            bytes: 0,
        })
    }

    /// The next frame; an error names the capture and the frame number.
    pub fn next_frame(&mut self) -> Option<Result<Record, CaptureError>> {
        let at = self.frames + 1;
        let error = |file: &str, e: &dyn std::fmt::Display| CaptureError::Format {
            file: file.to_owned(),
            what: format!("frame {at}: {e}"),
        };
        let record = match &mut self.inner {
            Inner::Pcap(r) => match r.next_packet()? {
                Ok(p) => Record {
                    timestamp: p.timestamp,
                    orig_len: p.orig_len,
                    data: p.data.into_owned(),
                },
                Err(e) => return Some(Err(error(&self.file, &e))),
            },
            Inner::Ng(r) => loop {
                let block = match r.next_block()? {
                    Ok(b) => b,
                    Err(e) => return Some(Err(error(&self.file, &e))),
                };
                let (interface, record) = match block {
                    Block::EnhancedPacket(p) => (
                        p.interface_id,
                        Record {
                            timestamp: p.timestamp,
                            orig_len: p.original_len,
                            data: p.data.into_owned(),
                        },
                    ),
                    Block::SimplePacket(p) => (
                        0,
                        Record {
                            timestamp: Duration::ZERO,
                            orig_len: p.original_len,
                            data: p.data.into_owned(),
                        },
                    ),
                    _ => continue,
                };
                let linktype = r.interfaces().get(interface as usize).map(|i| i.linktype);
                if linktype != Some(DataLink::ETHERNET) {
                    let what =
                        format!("link type {linktype:?}: only Ethernet frames can be replayed");
                    return Some(Err(error(&self.file, &what)));
                }
                break record;
            },
        };
        self.frames += 1;
        self.bytes += record.data.len() as u64;
        Some(Ok(record))
    }
}

/// A pcap file being written (Ethernet, microsecond timestamps).
pub struct CaptureWriter {
    writer: PcapWriter<BufWriter<File>>,
    file: String,
    /// Frames written.
    pub frames: u64,
}

impl CaptureWriter {
    /// Creates `path`.
    pub fn create(path: &Path) -> Result<CaptureWriter, CaptureError> {
        let out = File::create(path).map_err(|source| CaptureError::Io {
            file: path.display().to_string(),
            source,
        })?;
        CaptureWriter::new(out, path)
    }

    /// Writes to `out`, already open (and empty), named `path` in errors.
    pub fn new(out: File, path: &Path) -> Result<CaptureWriter, CaptureError> {
        let file = path.display().to_string();
        let header = PcapHeader {
            snaplen: 262_144,
            ..PcapHeader::default()
        };
        let writer = PcapWriter::with_header(BufWriter::with_capacity(1 << 20, out), header)
            .map_err(|e| CaptureError::Format {
                file: file.clone(),
                what: e.to_string(),
            })?;
        Ok(CaptureWriter {
            writer,
            file,
            frames: 0,
        })
    }

    /// Appends a frame.
    pub fn write_record(&mut self, record: &Record) -> Result<(), CaptureError> {
        let packet = PcapPacket::new(record.timestamp, record.orig_len, &record.data);
        self.writer
            .write_packet(&packet)
            .map_err(|e| CaptureError::Format {
                file: self.file.clone(),
                what: format!("writing: {e}"),
            })?;
        self.frames += 1;
        Ok(())
    }

    /// Flushes what is buffered to the file.
    pub fn finish(self) -> Result<(), CaptureError> {
        let file = self.file;
        self.writer
            .into_writer()
            .flush()
            .map_err(|source| CaptureError::Io { file, source })
    }
}

/// Where the replay's frames go; each is optional.
#[derive(Default)]
pub struct Outputs {
    /// Allowed frames, VNI rewritten to the destination VPC's.
    pub allowed: Option<CaptureWriter>,
    /// Frames allowed with an ambiguous destination, unchanged.
    pub ambiguous: Option<CaptureWriter>,
    /// Dropped frames, unchanged: by the policy or unreadable.
    pub dropped: Option<CaptureWriter>,
}

/// How to replay.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Frames per guest call.
    pub batch: usize,
    /// The source VNI of frames that are not VXLAN.
    pub default_vni: Option<u32>,
    /// Skip the policy: every readable frame is written out unchanged, to measure what the
    /// rest of the path costs.
    pub skip_policy: bool,
}

/// Time spent per phase.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    /// Reading the capture and parsing frames.
    pub parse: Duration,
    /// The policy calls.
    pub judge: Duration,
    /// Rewriting VNIs and writing the outputs.
    pub write: Duration,
}

/// What a replay did.
#[derive(Debug, Default)]
pub struct Report {
    /// Per verdict and drop reason (`not-ip`, `truncated`, `malformed`, `no-vni` among them).
    pub counters: Counters,
    /// Frames read.
    pub frames: u64,
    /// Time per phase.
    pub timings: Timings,
    /// Why the replay stopped before the end of the capture (a broken record: the frames
    /// before it were replayed and written).
    pub stopped: Option<CaptureError>,
}

/// Replays every frame of `input` through `policy`, writing to `outputs`. `progress` is
/// called after each batch with the bytes read so far. A capture that breaks off (a record
/// cut short, as when a capture was interrupted) ends the replay there, with the reason in
/// [`Report::stopped`]; an error is returned only when an output cannot be written or the
/// policy cannot be restarted.
pub fn replay(
    policy: &mut dyn Policy,
    input: &mut CaptureReader,
    outputs: &mut Outputs,
    options: Options,
    mut progress: impl FnMut(u64),
) -> Result<Report, ReplayError> {
    let batch_size = options.batch.max(1);
    let mut report = Report::default();
    let mut records: Vec<Record> = Vec::with_capacity(batch_size);
    let mut parsed: Vec<Result<Frame, FrameError>> = Vec::with_capacity(batch_size);
    let mut packets: Vec<Packet> = Vec::with_capacity(batch_size);
    let mut verdicts = vec![Verdict::default(); batch_size];
    loop {
        let started = Instant::now();
        records.clear();
        parsed.clear();
        packets.clear();
        while records.len() < batch_size && report.stopped.is_none() {
            match input.next_frame() {
                Some(Ok(record)) => records.push(record),
                Some(Err(e)) => report.stopped = Some(e),
                None => break,
            }
        }
        if records.is_empty() {
            break;
        }
        for record in &records {
            let frame = parse_frame(&record.data, options.default_vni);
            if let Ok(f) = &frame {
                packets.push(f.packet);
            }
            parsed.push(frame);
        }
        report.frames += records.len() as u64;
        let judged = Instant::now();
        report.timings.parse += judged - started;

        let outcome = if options.skip_policy || packets.is_empty() {
            None
        } else {
            let done = dataplane::step(Some(&mut *policy), None, &packets, &mut verdicts);
            done.count(&packets, &verdicts, policy.catalog(), &mut report.counters);
            let judged = done.judged != Judged::Dropped;
            done.restart_error()?;
            Some(judged)
        };
        let ok = outcome.unwrap_or(true);
        let out = &verdicts[..packets.len()];
        let written = Instant::now();
        report.timings.judge += written - judged;

        let mut next = out.iter();
        for (record, frame) in records.iter_mut().zip(&parsed) {
            let frame = match frame {
                Ok(frame) => frame,
                Err(e) => {
                    report.counters.count_drop(e.reason().as_str(), 1);
                    write(&mut outputs.dropped, record)?;
                    continue;
                }
            };
            let verdict = next.next().copied();
            if options.skip_policy {
                report.counters.packets += 1;
                write(&mut outputs.allowed, record)?;
                continue;
            }
            match verdict.filter(|_| ok) {
                Some(Verdict::Allow(vpc)) => {
                    if let Some(vxlan) = &frame.vxlan {
                        set_vni(&mut record.data, vxlan, policy.catalog().vpc(vpc).vni);
                    }
                    write(&mut outputs.allowed, record)?;
                }
                Some(Verdict::AllowAmbiguous(_)) => write(&mut outputs.ambiguous, record)?,
                Some(Verdict::Drop(_)) | None => write(&mut outputs.dropped, record)?,
            }
        }
        report.timings.write += written.elapsed();
        progress(input.bytes);
    }
    Ok(report)
}

/// Why a replay stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// An output could not be written.
    #[error(transparent)]
    Write(#[from] CaptureError),
    /// The policy failed and could not be restarted.
    #[error(transparent)]
    Restart(Box<RestartFailed>),
}

impl From<RestartFailed> for ReplayError {
    fn from(e: RestartFailed) -> Self {
        ReplayError::Restart(Box::new(e))
    }
}

fn write(out: &mut Option<CaptureWriter>, record: &Record) -> Result<(), CaptureError> {
    match out {
        Some(w) => w.write_record(record),
        None => Ok(()),
    }
}
