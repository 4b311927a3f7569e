//! Durable state on disk: the write-ahead log, snapshot files and the identity file.
