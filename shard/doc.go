// Package shard stores physical shards on Pebble: versioned key-value content
// and a time-partitioned index, both applied idempotently and commutatively.
//
// One Store (one Pebble database) holds every physical shard of a node. A
// shard is a named, contiguous span of the key space; dropping it is a single
// range deletion and digesting it is a single ordered scan.
//
// # Data model
//
// Content maps (table, key) to a value carrying a Version: a hybrid logical
// clock timestamp and the id of the site that originated the write. Applying a
// mutation keeps whichever version is greater (last writer wins), so applying a
// set of mutations in any order, any number of times, leaves the same state.
// A delete writes a tombstone carrying its version; tombstones are collected by
// CollectTombstones once they are older than the grace period, after which a
// replayed older write could reappear. The grace must therefore be longer than
// the longest replication outage a deployment retains.
//
// The index maps (table, owner, entry id) to a payload of at most 255 bytes.
// Entries are partitioned by the month of the entry id's timestamp and kept
// newest first. Every (table, owner, month) has an exact count of its live
// entries, maintained in the same batch as the entries, so page N of an owner
// is found by reading counts and seeking into one month. Index entries are
// versioned like content, so appends and removals commute; a removal leaves a
// tombstone entry that is not counted. Whole months are dropped for retention
// with DropMonthsBefore, which also records a floor below which later appends
// are ignored, so a retention drop commutes with late-arriving appends too.
//
// # Key layout
//
// Every key starts with the shard's local number (4 bytes, big endian); number
// 0 holds the store's metadata. After it, one byte names the space:
//
//	shard 'c' len(table) table key                      content record
//	shard 'i' len(table) table ^month owner ^id          index entry record
//	shard 'n' len(table) table ^month owner              live entry count (uint64; kept at 0, not deleted)
//	shard 'm' len(table) table ^month                    month present marker
//	shard 'r' len(table) table                           retention floor (month)
//	0 'S' name                                           shard record
//	0 'T' name                                           table record
//	0 'I' name                                           import state (ImportPage)
//	0 'V'                                                bound on content versions (bound.go)
//
// Months and ids are stored bitwise inverted (^x) so that an ascending scan
// returns the newest first. Records are version (8 bytes HLC, 4 bytes site),
// one flags byte (bit 0: tombstone), then the value or payload.
//
// Digests hash keys without the local shard number, so the digests of two
// copies of a shard on different nodes are comparable.
//
// # Migration
//
// A shard moves (or splits) online: NewExport reads it, or the part of it a
// KeyFilter selects, from one snapshot while new writes reach both copies;
// ImportPage applies the pages on the destination together with the
// export's cursor, so an interrupted copy resumes; DigestData compares the
// copies (SplitSpan narrows a difference down); PurgeMatching then removes a
// split's moved half from the source.
package shard
