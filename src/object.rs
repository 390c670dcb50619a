//! The kinds of object larder seals. A leaf module: the kind is part of
//! every sealed object's associated data (`seal`) and of every blob id's
//! derivation (`hash`), so it depends on neither.

/// What a sealed object is; part of its associated data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum ObjectKind {
    /// A chunk of file or stream content.
    DataBlob = 1,
    /// A directory: the entries of one tree.
    TreeBlob = 2,
    /// A list of content chunk ids, for files too large to list inline.
    ListBlob = 3,
    /// The header at the end of a pack.
    PackHeader = 4,
    /// An index object.
    Index = 5,
    /// A snapshot object.
    Snapshot = 6,
    /// The repository config.
    Config = 7,
    /// A lease object.
    Lease = 8,
    /// A pending-deletion list.
    Pending = 9,
    /// The record of a restore drill.
    Drill = 10,
}

impl ObjectKind {
    /// Parses the one-byte code used in pack headers and index objects.
    pub fn from_code(code: u8) -> Option<ObjectKind> {
        use ObjectKind::*;
        Some(match code {
            1 => DataBlob,
            2 => TreeBlob,
            3 => ListBlob,
            4 => PackHeader,
            5 => Index,
            6 => Snapshot,
            7 => Config,
            8 => Lease,
            9 => Pending,
            10 => Drill,
            _ => return None,
        })
    }

    /// The one-byte code.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// True for the blob kinds that live in packs.
    pub fn is_blob(self) -> bool {
        matches!(
            self,
            ObjectKind::DataBlob | ObjectKind::TreeBlob | ObjectKind::ListBlob
        )
    }
}
