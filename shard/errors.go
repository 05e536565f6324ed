package shard

import "errors"

// Sentinel errors. Functions wrap them with detail; test with errors.Is.
var (
	// ErrClosed is returned by operations on a closed Store.
	ErrClosed = errors.New("shard: store closed")
	// ErrInvalid marks bad input: an empty or oversized field, a malformed id.
	ErrInvalid = errors.New("shard: invalid argument")
	// ErrTooLarge marks a batch over the configured limits.
	ErrTooLarge = errors.New("shard: batch too large")
	// ErrOutOfRange marks a limit, offset or cursor outside its allowed range.
	ErrOutOfRange = errors.New("shard: out of range")
	// ErrShardNotFound is returned for a shard name the store does not hold.
	ErrShardNotFound = errors.New("shard: no such shard")
	// ErrTableNotFound is returned for a table name the store does not know.
	ErrTableNotFound = errors.New("shard: no such table")
	// ErrNotFound is returned by Get for a key that is absent or deleted.
	ErrNotFound = errors.New("shard: not found")
	// ErrExists is returned when creating a shard or table that exists.
	ErrExists = errors.New("shard: already exists")
	// ErrWrongKind is returned for a content operation on an index table or
	// the reverse.
	ErrWrongKind = errors.New("shard: wrong table kind")
)
