//! File-tree backups, browsing and restore (issue 3).
