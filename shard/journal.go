package shard

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// The journal is a router's durable record of the writes it accepted and of
// the replicas each must still reach. It lives in the store's metadata
// (shard 0), beside the shards, so one Pebble WAL carries both:
//
//	0 'J' seq              the entry (opaque bytes: the router's encoding)
//	0 'j' seq target       a job: target must still apply entry seq
//	0 'E' seq target       a job moved to the error queue
//
// An entry is deleted with its last job, unless it also holds an outbox
// marker (see outbox.go): then it is deleted once it has neither. Targets are
// opaque strings (the router uses "node/shard").
const (
	metaJournal  byte = 'J'
	metaJob      byte = 'j'
	metaErrorJob byte = 'E'
)

// Job is a pending delivery of a journal entry to one target.
type Job struct {
	Seq    uint64 `json:"-"`
	Target string `json:"-"`
	// Attempts counts failed deliveries.
	Attempts int `json:"attempts,omitempty"`
	// LastError is the last failure's message.
	LastError string `json:"last_error,omitempty"`
	// Failed is when the last attempt failed (zero if none did).
	Failed time.Time `json:"failed,omitzero"`
	// Next is when the job is due again (zero: now).
	Next time.Time `json:"next,omitzero"`
}

func journalKey(seq uint64) []byte {
	return binary.BigEndian.AppendUint64(metaKey(metaJournal, ""), seq)
}

func jobKey(kind byte, seq uint64, target string) []byte {
	return append(binary.BigEndian.AppendUint64(metaKey(kind, ""), seq), target...)
}

func (s *Store) loadJournalSeq() error {
	p := metaKey(metaJournal, "")
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: p, UpperBound: prefixEnd(p)})
	if err != nil {
		return err
	}
	defer it.Close()
	var last uint64
	if it.Last() {
		if len(it.Key()) != len(p)+8 {
			return fmt.Errorf("shard: corrupt journal key %x", it.Key())
		}
		last = binary.BigEndian.Uint64(it.Key()[len(p):])
	}
	// Error-queue entries keep their journal entry; their seqs are below
	// the last entry's, so the counter above is already past them.
	if err := it.Error(); err != nil {
		return err
	}
	// Entries trimmed from the outbox were seen by remote sites, which
	// remember their seqs: never assign those again, even once the journal
	// is empty.
	floor, err := s.loadOutbox()
	if err != nil {
		return err
	}
	s.journal.seq.Store(max(last, floor))
	return nil
}

// JournalAppend durably records an entry and one job per target, and returns
// the entry's sequence number. Like Apply it returns once fsynced, sharing
// syncs with concurrent writers.
func (s *Store) JournalAppend(ctx context.Context, data []byte, targets []string) (uint64, error) {
	if len(targets) == 0 {
		return 0, fmt.Errorf("%w: journal entry without targets", ErrInvalid)
	}
	_, seq, err := s.ApplyJournaled(ctx, nil, data, targets)
	if err != nil {
		return 0, fmt.Errorf("shard: journal append: %w", err)
	}
	return seq, nil
}

// JournalSeq returns the last journal sequence number assigned.
func (s *Store) JournalSeq() uint64 { return s.journal.seq.Load() }

// ApplyJournaled applies local mutations (each naming a shard of this
// store) and, if targets is not empty, records the entry with one job per
// target, all in one atomic batch and one fsync: the router's write path
// when some replicas are local. It returns the outcomes of muts and the
// entry's sequence number (0 if no entry was recorded). It is ApplyLogged
// without LogOptions.
func (s *Store) ApplyJournaled(ctx context.Context, muts []Mutation, entry []byte, targets []string) ([]Outcome, uint64, error) {
	return s.ApplyLogged(ctx, muts, entry, targets, LogOptions{})
}

// JournalEntry returns an entry's bytes.
func (s *Store) JournalEntry(seq uint64) ([]byte, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.mu.closed {
		return nil, ErrClosed
	}
	v, closer, err := s.db.Get(journalKey(seq))
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, fmt.Errorf("%w: journal entry %d", ErrNotFound, seq)
	}
	if err != nil {
		return nil, err
	}
	defer closer.Close()
	return append([]byte(nil), v...), nil
}

// JobDone removes a delivered job, and its entry once no job of it remains.
// It does not sync: a job lost in a crash is delivered again, harmlessly,
// since applying is idempotent.
func (s *Store) JobDone(seq uint64, target string) error {
	return s.removeJob(metaJob, seq, target)
}

func (s *Store) removeJob(kind byte, seq uint64, target string) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.mu.closed {
		return ErrClosed
	}
	s.journal.mu.Lock() // serialises the "last job of the entry" check
	defer s.journal.mu.Unlock()
	k := jobKey(kind, seq, target)
	// A job is removed once. A pending job can be delivered twice (a retry
	// scan that listed it before another delivery of it finished), and the
	// second JobDone must change nothing: counting it again would take the
	// entry's last job for done while another target still needs the
	// entry, and delete the entry under it.
	_, closer, err := s.db.Get(k)
	if errors.Is(err, pebble.ErrNotFound) {
		if kind == metaErrorJob {
			return fmt.Errorf("%w: error job %d for %s", ErrNotFound, seq, target)
		}
		return nil
	}
	if err != nil {
		return err
	}
	_ = closer.Close()
	b := s.db.NewBatch()
	defer b.Close()
	_ = b.Delete(k, nil)
	var last bool
	if n, ok := s.journal.jobs[seq]; ok && n > 0 {
		last = n == 1
		if last {
			delete(s.journal.jobs, seq)
		} else {
			s.journal.jobs[seq] = n - 1
		}
	} else {
		var err error
		if last, err = s.lastJobLocked(seq, kind, target); err != nil {
			return err
		}
	}
	// An entry still owed to a remote site stays: TrimOutbox deletes it.
	if last && !s.journal.outbox.has(seq) {
		_ = b.Delete(journalKey(seq), nil)
	}
	// A dropped error job is an operator's decision, and rare: it syncs,
	// and so makes the unsynced move that put the job there durable too
	// (see JobFailed), lest a crash bring it back as a pending job.
	if kind == metaErrorJob {
		return b.Commit(pebble.Sync)
	}
	return b.Commit(pebble.NoSync)
}

// lastJobLocked reports whether (kind, seq, target) is the only job of seq,
// pending or in the error queue. s.journal.mu must be held.
func (s *Store) lastJobLocked(seq uint64, kind byte, target string) (bool, error) {
	for _, k := range []byte{metaJob, metaErrorJob} {
		p := jobKey(k, seq, "")
		it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: p, UpperBound: prefixEnd(p)})
		if err != nil {
			return false, err
		}
		for it.First(); it.Valid(); it.Next() {
			if k == kind && string(it.Key()[len(p):]) == target {
				continue
			}
			_ = it.Close()
			return false, nil
		}
		if err := it.Close(); err != nil {
			return false, err
		}
	}
	return true, nil
}

// JobFailed records a failed delivery. With toErrorQueue the job moves to
// the error queue (it is no longer retried until RetryErrorJob). A job that
// no longer exists (it was delivered) stays gone. Like JobDone it does not
// sync: a record lost in a crash leaves the job pending as it was, due at
// once, and the next failure records it again. (A replica that falls
// behind fails many deliveries; a sync for each would slow the node that
// writes to it, too.)
func (s *Store) JobFailed(j Job, toErrorQueue bool) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.mu.closed {
		return ErrClosed
	}
	rec, err := json.Marshal(j)
	if err != nil {
		return err
	}
	s.journal.mu.Lock()
	defer s.journal.mu.Unlock()
	// A job that is gone was delivered meanwhile: never bring it back.
	if _, closer, err := s.db.Get(jobKey(metaJob, j.Seq, j.Target)); err != nil {
		if errors.Is(err, pebble.ErrNotFound) {
			return nil
		}
		return err
	} else {
		_ = closer.Close()
	}
	b := s.db.NewBatch()
	defer b.Close()
	if toErrorQueue {
		_ = b.Delete(jobKey(metaJob, j.Seq, j.Target), nil)
		_ = b.Set(jobKey(metaErrorJob, j.Seq, j.Target), rec, nil)
	} else {
		_ = b.Set(jobKey(metaJob, j.Seq, j.Target), rec, nil)
	}
	return b.Commit(pebble.NoSync)
}

// Jobs lists up to limit pending jobs (or error-queue jobs), oldest first,
// starting after (seq, target) = (afterSeq, afterTarget).
func (s *Store) Jobs(errorQueue bool, afterSeq uint64, afterTarget string, limit int) ([]Job, error) {
	if limit <= 0 {
		return nil, nil
	}
	var out []Job
	for {
		jobs, page, err := s.JobsSkipping(errorQueue, afterSeq, afterTarget, limit-len(out), nil)
		out = append(out, jobs...)
		if err != nil || page.Done || len(out) == limit {
			return out, err
		}
		afterSeq, afterTarget = page.Seq, page.Target
	}
}

// JobsPage says where a JobsSkipping call stopped.
type JobsPage struct {
	// Seq and Target are the last job visited, listed or passed over:
	// the next call starts after it.
	Seq    uint64
	Target string
	// Done: no job is left after it.
	Done bool
}

// jobsVisited bounds the jobs one JobsSkipping call visits, per job it
// may list, so that a caller passing over a long run of jobs does not hold
// the store (whose lock a schema change waits on) for long.
const jobsVisited = 16

// JobsSkipping lists up to limit jobs like Jobs, leaving out (and not
// counting in limit) those for which skip, given the job's key, returns
// true. Skip is called before a job's record is decoded, so that a caller
// passing over many jobs it does not want (a retry loop, those of a node
// that is down) pays for reading their keys only; it must not keep target.
// A call visits at most 16 × limit jobs; the page says where it stopped.
func (s *Store) JobsSkipping(errorQueue bool, afterSeq uint64, afterTarget string, limit int, skip func(seq uint64, target []byte) bool) ([]Job, JobsPage, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.mu.closed {
		return nil, JobsPage{}, ErrClosed
	}
	kind := metaJob
	if errorQueue {
		kind = metaErrorJob
	}
	p := metaKey(kind, "")
	lo := p
	if afterSeq > 0 || afterTarget != "" {
		lo = append(jobKey(kind, afterSeq, afterTarget), 0)
	}
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: prefixEnd(p)})
	if err != nil {
		return nil, JobsPage{}, err
	}
	defer it.Close()
	var out []Job
	page := JobsPage{Seq: afterSeq, Target: afterTarget}
	var skippedSeq uint64 // the last job passed over after the last listed
	var skippedTarget []byte
	skipped := false
	visited, maxVisited := 0, math.MaxInt
	if limit < math.MaxInt/jobsVisited {
		maxVisited = jobsVisited * limit
	}
	it.First()
	for ; it.Valid() && len(out) < limit && visited < maxVisited; it.Next() {
		visited++
		k := it.Key()[len(p):]
		if len(k) < 8 {
			return nil, JobsPage{}, fmt.Errorf("shard: corrupt job key %x", it.Key())
		}
		seq := binary.BigEndian.Uint64(k)
		if skip != nil && skip(seq, k[8:]) {
			skippedSeq, skippedTarget, skipped = seq, append(skippedTarget[:0], k[8:]...), true
			continue
		}
		var j Job
		if err := json.Unmarshal(it.Value(), &j); err != nil {
			return nil, JobsPage{}, fmt.Errorf("shard: corrupt job %x: %w", it.Key(), err)
		}
		j.Seq, j.Target = seq, string(k[8:])
		page.Seq, page.Target, skipped = j.Seq, j.Target, false
		out = append(out, j)
	}
	if err := it.Error(); err != nil {
		return nil, JobsPage{}, err
	}
	if skipped {
		page.Seq, page.Target = skippedSeq, string(skippedTarget)
	}
	page.Done = !it.Valid()
	return out, page, nil
}

// RetryErrorJob moves a job from the error queue back to the pending jobs,
// with its attempts reset.
func (s *Store) RetryErrorJob(seq uint64, target string) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.mu.closed {
		return ErrClosed
	}
	s.journal.mu.Lock()
	defer s.journal.mu.Unlock()
	ek := jobKey(metaErrorJob, seq, target)
	v, closer, err := s.db.Get(ek)
	if errors.Is(err, pebble.ErrNotFound) {
		return fmt.Errorf("%w: error job %d for %s", ErrNotFound, seq, target)
	}
	if err != nil {
		return err
	}
	var j Job
	err = json.Unmarshal(v, &j)
	_ = closer.Close()
	if err != nil {
		return fmt.Errorf("shard: corrupt error job %d for %s: %w", seq, target, err)
	}
	// Due now, attempts reset; it keeps its failure time, which tells a
	// router's retry loop that the job is its to deliver (a job that never
	// failed belongs to the Write that journaled it).
	j.Attempts, j.Next = 0, time.Time{}
	if j.Failed.IsZero() {
		j.Failed = s.opts.Clock.Now()
	}
	rec, err := json.Marshal(&j)
	if err != nil {
		return err
	}
	b := s.db.NewBatch()
	defer b.Close()
	_ = b.Delete(ek, nil)
	_ = b.Set(jobKey(metaJob, seq, target), rec, nil)
	return b.Commit(pebble.Sync)
}

// DropErrorJob deletes a job from the error queue: that target will never
// get the entry from this journal.
func (s *Store) DropErrorJob(seq uint64, target string) error {
	return s.removeJob(metaErrorJob, seq, target)
}

// CountJobs counts pending (or error-queue) jobs, stopping at limit.
func (s *Store) CountJobs(errorQueue bool, limit int) (int, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.mu.closed {
		return 0, ErrClosed
	}
	kind := metaJob
	if errorQueue {
		kind = metaErrorJob
	}
	p := metaKey(kind, "")
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: p, UpperBound: prefixEnd(p)})
	if err != nil {
		return 0, err
	}
	defer it.Close()
	n := 0
	for it.First(); it.Valid() && n < limit; it.Next() {
		n++
	}
	return n, it.Error()
}
