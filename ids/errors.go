package ids

import "errors"

var (
	// ErrInvalidID is returned, wrapped with detail, by ID.Validate.
	ErrInvalidID = errors.New("ids: invalid id")
	// ErrInvalidConfig is returned, wrapped with detail, when a Generator
	// is configured with an out-of-range site or worker.
	ErrInvalidConfig = errors.New("ids: invalid config")
	// ErrFarFuture is returned, wrapped with detail, by HLC.Update and
	// HLC.Check for a remote timestamp too far ahead of the local clock.
	ErrFarFuture = errors.New("ids: timestamp from the far future")
	// ErrInvalidMonth is returned, wrapped with detail, by ParseMonth.
	ErrInvalidMonth = errors.New("ids: invalid month")
)
