// Package ids provides Aviary's 64-bit time-ordered identifiers and its
// hybrid logical clock (HLC). Both read wall time through the Clock
// interface so that tests can inject a ManualClock instead of sleeping.
//
// # IDs
//
// An ID is a uint64 laid out, most significant bit first, as:
//
//	+---+----------------------------+--------+--------+------------+
//	| 0 | 41 bits: ms since Epoch    | 5 site | 5 wrkr | 12 seq     |
//	+---+----------------------------+--------+--------+------------+
//	 63  62                        22  21   17  16   12  11        0
//
// The top bit is always zero so an ID also fits in an int64. The time
// field counts milliseconds since Epoch (2024-01-01T00:00:00Z) and covers
// roughly 69 years, until September 2093. Because the time occupies the
// high bits, IDs sort by creation time; IDs created in the same
// millisecond sort by site, then worker, then sequence. Each (site,
// worker) pair may issue 4096 IDs per millisecond; a Generator that runs
// out of sequence numbers borrows the next millisecond rather than
// sleeping, and never goes backwards when the wall clock does. The zero ID
// is never issued and is rejected by ID.Validate.
//
// Months are numbered year*12 + (month-1) in UTC ("month numbers"), so
// 2026-11 is 2026*12 + 10. MinIDForMonth gives the smallest ID of a month,
// which makes [MinIDForMonth(m), MinIDForMonth(m+1)) the ID range of
// month m.
//
// # Timestamps
//
// A Timestamp is an HLC timestamp packed into a uint64:
//
//	+------------------------------------------------+----------------+
//	| 48 bits: wall ms since the Unix epoch          | 16 bits: logic |
//	+------------------------------------------------+----------------+
//	 63                                            16  15             0
//
// Comparing two Timestamps as integers orders them first by wall time and
// then by the logical counter. An HLC (Kulkarni et al., "Logical Physical
// Clocks and Consistent Snapshots in Globally Distributed Databases",
// 2014) hands out timestamps that are strictly increasing, close to the
// wall clock, and greater than every remote timestamp it has observed.
// Remote timestamps that are further ahead of the local wall clock than a
// configured bound are refused with ErrFarFuture so that one node with a
// broken clock cannot drag every other node's clock into the future.
package ids
