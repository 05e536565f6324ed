// Package timex holds the small time helpers every package of Aviary
// needs alike.
package timex

import (
	"context"
	"time"
)

// Sleep waits d, or until ctx ends; it returns ctx's error in that case.
// It is for pacing, backoff and polling intervals, never for
// synchronisation.
func Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
