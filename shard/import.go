package shard

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
)

// An import (the receiving side of a shard migration) records its progress
// in the store's metadata, in the same batch as the data it imports:
//
//	0 'I' name             the import's state (opaque bytes: its cursor)
const metaImport byte = 'I'

// MaxImportStateKeyBytes bounds the name of an import's state.
const MaxImportStateKeyBytes = 255

func checkStateKey(stateKey string) error {
	if stateKey == "" {
		return fmt.Errorf("%w: import state key is empty", ErrInvalid)
	}
	if len(stateKey) > MaxImportStateKeyBytes {
		return fmt.Errorf("%w: import state key is %d bytes, limit is %d", ErrInvalid, len(stateKey), MaxImportStateKeyBytes)
	}
	return nil
}

// ImportPage applies a page of versioned mutations exactly as Apply does
// (last writer wins, counts maintained; each mutation names its shard and
// carries a non-zero version) and, in the same atomic batch, sets the import
// state named stateKey to state: typically the cursor of the export the page
// came from. It does not wait for the batch to be durable: a crash may lose
// the last pages imported, but never a page without its state or a state
// without its page, so an import resumes from ImportState after a restart.
// Sync makes the pages imported so far durable. muts may be empty, to set
// the state alone.
func (s *Store) ImportPage(ctx context.Context, muts []Mutation, stateKey string, state []byte) ([]Outcome, error) {
	if err := checkStateKey(stateKey); err != nil {
		return nil, err
	}
	key := metaKey(metaImport, stateKey)
	return s.apply(ctx, muts, false, true, func(b *pebble.Batch) {
		_ = b.Set(key, state, nil)
	})
}

// ImportState returns the state ImportPage last recorded under stateKey;
// found is false if there is none.
func (s *Store) ImportState(stateKey string) (state []byte, found bool, err error) {
	if err := checkStateKey(stateKey); err != nil {
		return nil, false, err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.mu.closed {
		return nil, false, ErrClosed
	}
	v, closer, err := s.db.Get(metaKey(metaImport, stateKey))
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("shard: import state %q: %w", stateKey, err)
	}
	defer closer.Close()
	return bytes.Clone(v), true, nil
}

// DeleteImportState durably deletes the import state named stateKey (a
// finished or abandoned import). Deleting an absent state is not an error.
func (s *Store) DeleteImportState(stateKey string) error {
	if err := checkStateKey(stateKey); err != nil {
		return err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.mu.closed {
		return ErrClosed
	}
	if err := s.db.Delete(metaKey(metaImport, stateKey), pebble.Sync); err != nil {
		return fmt.Errorf("shard: delete import state %q: %w", stateKey, err)
	}
	return nil
}

// Sync makes every write committed before it durable, those of ImportPage
// included: it syncs the write-ahead log, which holds writes in commit
// order.
func (s *Store) Sync(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.mu.closed {
		return ErrClosed
	}
	if err := s.db.LogData(nil, pebble.Sync); err != nil {
		return fmt.Errorf("shard: sync: %w", err)
	}
	return nil
}
