package gizzard

import "errors"

// Sentinel errors. Functions wrap them with detail; test with errors.Is.
var (
	// ErrInvalidMap is returned by Validate for a map that breaks an
	// invariant, and by routing calls that meet such a map.
	ErrInvalidMap = errors.New("gizzard: invalid map")
	// ErrInvalidChange is returned by Apply and Check for a change that is
	// malformed or would leave the map invalid; the error names the step.
	ErrInvalidChange = errors.New("gizzard: invalid change")
	// ErrNoTable is returned by Lookup for a table the map does not hold.
	ErrNoTable = errors.New("gizzard: no such table")
	// ErrNoForwarding is returned by Lookup when no forwarding of the table
	// has a base at or below the hash.
	ErrNoForwarding = errors.New("gizzard: no forwarding")
	// ErrBlocked is returned by PlanRead when a tree has no readable leaf
	// and a Blocked shard is on one of its read paths.
	ErrBlocked = errors.New("gizzard: blocked")
	// ErrNoReadable is returned by PlanRead when a tree has no readable
	// leaf and nothing is blocked: every path is write-only or a black hole.
	ErrNoReadable = errors.New("gizzard: no readable shard")
	// ErrNoShard is returned by routing calls for a shard id the map does
	// not hold.
	ErrNoShard = errors.New("gizzard: no such shard")
	// ErrVersionMoved is returned (wrapped in ErrInvalidChange) for a
	// change whose IfVersion is not the map's version.
	ErrVersionMoved = errors.New("gizzard: the map moved")
	// ErrStateMoved is returned (wrapped in ErrInvalidChange) for a
	// set_migration whose Expect is not the migration's state: another
	// driver or an operator moved it first.
	ErrStateMoved = errors.New("gizzard: the migration moved")
)
