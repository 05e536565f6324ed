package timeline

import "errors"

// Sentinel errors. Functions wrap them with detail; test with errors.Is.
var (
	// ErrInvalidOptions is returned by Options.Validate and
	// RingOptions.Validate for a setting out of its range.
	ErrInvalidOptions = errors.New("timeline: invalid options")
	// ErrInvalidNodes is returned by NewRings for an empty node list, an
	// empty node id or a node listed twice.
	ErrInvalidNodes = errors.New("timeline: invalid node list")
)
