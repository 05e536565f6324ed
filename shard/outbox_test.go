package shard

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// journalState is the journal as the database holds it.
type journalState struct {
	entries map[uint64]string
	markers map[uint64]bool
	jobs    map[uint64][]string // pending
	errJobs map[uint64][]string // error queue
}

func readJournal(t testing.TB, s *Store) journalState {
	t.Helper()
	st := journalState{entries: map[uint64]string{}, markers: map[uint64]bool{}, jobs: map[uint64][]string{}, errJobs: map[uint64][]string{}}
	for _, kind := range []byte{metaJournal, metaOutbox, metaJob, metaErrorJob} {
		p := metaKey(kind, "")
		for _, k := range rawKeys(t, s, p, prefixEnd(p)) {
			k = k[len(p):]
			if len(k) < 8 {
				t.Fatalf("short journal key %q %x", kind, k)
			}
			seq, target := binary.BigEndian.Uint64(k), string(k[8:])
			switch kind {
			case metaJournal:
				v, _ := rawGet(t, s, journalKey(seq))
				st.entries[seq] = string(v)
			case metaOutbox:
				st.markers[seq] = true
			case metaJob:
				st.jobs[seq] = append(st.jobs[seq], target)
			case metaErrorJob:
				st.errJobs[seq] = append(st.errJobs[seq], target)
			}
		}
	}
	return st
}

// checkJournal checks, on a quiescent store, that every entry is held by a
// marker or a job, that every marker and job has its entry, and that the
// in-memory outbox matches the database.
func checkJournal(t testing.TB, s *Store) journalState {
	t.Helper()
	st := readJournal(t, s)
	for seq := range st.entries {
		if !st.markers[seq] && len(st.jobs[seq]) == 0 && len(st.errJobs[seq]) == 0 {
			t.Errorf("entry %d leaked: no marker, no job", seq)
		}
	}
	for _, m := range []map[uint64][]string{st.jobs, st.errJobs} {
		for seq, targets := range m {
			if _, ok := st.entries[seq]; !ok {
				t.Errorf("entry %d missing; it has jobs %v", seq, targets)
			}
		}
	}
	for seq := range st.markers {
		if _, ok := st.entries[seq]; !ok {
			t.Errorf("entry %d missing; it has an outbox marker", seq)
		}
	}
	want := slices.Sorted(maps.Keys(st.markers))
	s.journal.mu.Lock()
	got := slices.Clone(s.journal.outbox.live())
	s.journal.mu.Unlock()
	if !slices.Equal(got, want) {
		t.Errorf("in-memory outbox %v, database %v", got, want)
	}
	n, oldest, newest, err := s.OutboxStats()
	var wantOldest, wantNewest uint64
	if len(want) > 0 {
		wantOldest, wantNewest = want[0], want[len(want)-1]
	}
	if err != nil || n != len(want) || oldest != wantOldest || newest != wantNewest {
		t.Errorf("OutboxStats = %d, %d, %d, %v; want %d, %d, %d", n, oldest, newest, err, len(want), wantOldest, wantNewest)
	}
	return st
}

func logged(t testing.TB, s *Store, muts []Mutation, entry string, targets []string, o LogOptions) uint64 {
	t.Helper()
	outs, seq, err := s.ApplyLogged(context.Background(), muts, []byte(entry), targets, o)
	if err != nil {
		t.Fatalf("ApplyLogged(%q): %v", entry, err)
	}
	if len(outs) != len(muts) {
		t.Fatalf("ApplyLogged(%q): %d outcomes for %d mutations", entry, len(outs), len(muts))
	}
	return seq
}

func outboxSeqs(t testing.TB, s *Store, after uint64, limit int) ([]uint64, []string) {
	t.Helper()
	es, err := s.OutboxEntries(after, limit)
	if err != nil {
		t.Fatalf("OutboxEntries(%d, %d): %v", after, limit, err)
	}
	var seqs []uint64
	var data []string
	for _, e := range es {
		seqs = append(seqs, e.Seq)
		data = append(data, string(e.Data))
	}
	return seqs, data
}

func wantEntry(t testing.TB, s *Store, seq uint64, want bool) {
	t.Helper()
	_, err := s.JournalEntry(seq)
	switch {
	case want && err != nil:
		t.Fatalf("entry %d: %v, want present", seq, err)
	case !want && !errors.Is(err, ErrNotFound):
		t.Fatalf("entry %d: %v, want ErrNotFound", seq, err)
	}
}

func wantStats(t testing.TB, s *Store, count int, oldest uint64) {
	t.Helper()
	n, o, _, err := s.OutboxStats()
	if err != nil || n != count || o != oldest {
		t.Fatalf("OutboxStats = %d, %d, %v; want %d, %d", n, o, err, count, oldest)
	}
}

func TestOutboxEntriesSurviveJobs(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t, nil)
	put := func(k string) []Mutation { return []Mutation{putM(shA, k, "v-"+k, ver(10, 0, 1))} }

	seq1 := logged(t, s, put("k1"), "e1", []string{"n2/s1", "n3/s1"}, LogOptions{Outbox: true})
	seq2 := logged(t, s, put("k2"), "e2", nil, LogOptions{Outbox: true}) // every replica local
	seq3 := logged(t, s, put("k3"), "e3", []string{"n2/s1"}, LogOptions{})
	seq4 := logged(t, s, nil, "e4", []string{"n2/s1"}, LogOptions{Outbox: true})
	if seq1 == 0 || seq2 != seq1+1 || seq3 != seq2+1 || seq4 != seq3+1 {
		t.Fatalf("seqs %d %d %d %d", seq1, seq2, seq3, seq4)
	}
	for _, k := range []string{"k1", "k2", "k3"} {
		if v, ok := getValue(t, s, shA, k); !ok || string(v.Value) != "v-"+k {
			t.Fatalf("%s = %q, %v", k, v.Value, ok)
		}
	}
	if jobs, _ := s.Jobs(false, 0, "", 10); len(jobs) != 4 {
		t.Fatalf("jobs %+v", jobs)
	}
	wantStats(t, s, 3, seq1)

	for _, j := range []struct {
		seq    uint64
		target string
	}{{seq1, "n2/s1"}, {seq1, "n3/s1"}, {seq3, "n2/s1"}, {seq4, "n2/s1"}} {
		if err := s.JobDone(j.seq, j.target); err != nil {
			t.Fatal(err)
		}
	}
	wantEntry(t, s, seq1, true)
	wantEntry(t, s, seq2, true)
	wantEntry(t, s, seq3, false) // no marker: gone with its last job
	wantEntry(t, s, seq4, true)

	seqs, data := outboxSeqs(t, s, 0, 10)
	if !slices.Equal(seqs, []uint64{seq1, seq2, seq4}) || !slices.Equal(data, []string{"e1", "e2", "e4"}) {
		t.Fatalf("outbox %v %q", seqs, data)
	}
	if seqs, _ := outboxSeqs(t, s, seq1, 1); !slices.Equal(seqs, []uint64{seq2}) {
		t.Fatalf("outbox after %d, limit 1: %v", seq1, seqs)
	}
	if seqs, _ := outboxSeqs(t, s, seq2, 10); !slices.Equal(seqs, []uint64{seq4}) {
		t.Fatalf("outbox after %d: %v", seq2, seqs)
	}
	if seqs, _ := outboxSeqs(t, s, seq4, 10); len(seqs) != 0 {
		t.Fatalf("outbox after the last: %v", seqs)
	}
	if seqs, _ := outboxSeqs(t, s, math.MaxUint64, 10); len(seqs) != 0 {
		t.Fatalf("outbox after MaxUint64: %v", seqs)
	}
	for _, limit := range []int{0, -1, MaxOutboxEntries + 1} {
		_, err := s.OutboxEntries(0, limit)
		wantErr(t, err, ErrInvalid, "limit")
	}
	if _, err := s.OutboxEntries(0, MaxOutboxEntries); err != nil {
		t.Fatal(err)
	}
	wantStats(t, s, 3, seq1)

	// Neither targets, Outbox nor State: a plain Apply.
	if outs, seq, err := s.ApplyLogged(ctx, put("k5"), []byte("e5"), nil, LogOptions{}); err != nil || seq != 0 || len(outs) != 1 || outs[0] != Applied {
		t.Fatalf("plain: %v %d %v", outs, seq, err)
	}
	if s.JournalSeq() != seq4 {
		t.Fatalf("JournalSeq %d after a plain apply, want %d", s.JournalSeq(), seq4)
	}

	// A target named twice is one job: its entry goes with it.
	seq6 := logged(t, s, nil, "e6", []string{"a/s1", "a/s1"}, LogOptions{})
	if err := s.JobDone(seq6, "a/s1"); err != nil {
		t.Fatal(err)
	}
	wantEntry(t, s, seq6, false)
	checkJournal(t, s)
}

func TestTrimOutbox(t *testing.T) {
	s := newTestStore(t, nil)
	a := logged(t, s, nil, "a", []string{"t1"}, LogOptions{Outbox: true})
	b := logged(t, s, nil, "b", []string{"t1", "t2"}, LogOptions{Outbox: true})
	c := logged(t, s, nil, "c", []string{"t1"}, LogOptions{Outbox: true})
	d := logged(t, s, nil, "d", nil, LogOptions{Outbox: true})
	e := logged(t, s, nil, "e", []string{"t1"}, LogOptions{Outbox: true})
	f := logged(t, s, nil, "f", []string{"t1"}, LogOptions{}) // no marker, within the trim
	for _, err := range []error{
		s.JobDone(a, "t1"),
		s.JobDone(b, "t1"),
		s.JobFailed(Job{Seq: c, Target: "t1", Attempts: 5, LastError: "down"}, true),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	wantStats(t, s, 5, a)

	n, err := s.TrimOutbox(d)
	if err != nil || n != 4 {
		t.Fatalf("TrimOutbox(%d) = %d, %v; want 4", d, n, err)
	}
	wantEntry(t, s, a, false) // no job left: deleted
	wantEntry(t, s, b, true)  // t2 pending
	wantEntry(t, s, c, true)  // in the error queue
	wantEntry(t, s, d, false) // never had a job
	wantEntry(t, s, e, true)  // above the trim
	wantEntry(t, s, f, true)  // its job holds it
	wantStats(t, s, 1, e)
	if seqs, _ := outboxSeqs(t, s, 0, 10); !slices.Equal(seqs, []uint64{e}) {
		t.Fatalf("outbox after trim: %v", seqs)
	}
	checkJournal(t, s)

	// A job finished after the trim deletes the entry.
	if err := s.JobDone(b, "t2"); err != nil {
		t.Fatal(err)
	}
	wantEntry(t, s, b, false)
	if err := s.RetryErrorJob(c, "t1"); err != nil {
		t.Fatal(err)
	}
	wantEntry(t, s, c, true)
	if err := s.JobFailed(Job{Seq: c, Target: "t1", Attempts: 6}, true); err != nil {
		t.Fatal(err)
	}
	if err := s.DropErrorJob(c, "t1"); err != nil {
		t.Fatal(err)
	}
	wantEntry(t, s, c, false)

	if n, err := s.TrimOutbox(d); err != nil || n != 0 {
		t.Fatalf("second TrimOutbox(%d) = %d, %v", d, n, err)
	}
	if n, err := s.TrimOutbox(math.MaxUint64); err != nil || n != 1 {
		t.Fatalf("TrimOutbox(max) = %d, %v", n, err)
	}
	wantEntry(t, s, e, true)
	wantStats(t, s, 0, 0)
	for _, j := range []uint64{e, f} {
		if err := s.JobDone(j, "t1"); err != nil {
			t.Fatal(err)
		}
	}
	if st := checkJournal(t, s); len(st.entries) != 0 {
		t.Fatalf("journal not empty: %v", st.entries)
	}
}

func TestTrimOutboxBatches(t *testing.T) {
	s := newTestStore(t, nil)
	const total = 3*trimBatch + 17
	var seqs []uint64
	for i := range total {
		var targets []string
		if i%3 == 0 {
			targets = []string{"t"}
		}
		seqs = append(seqs, logged(t, s, nil, strconv.Itoa(i), targets, LogOptions{Outbox: true}))
	}
	wantStats(t, s, total, seqs[0])
	mid := seqs[trimBatch+100]
	if n, err := s.TrimOutbox(mid); err != nil || n != trimBatch+101 {
		t.Fatalf("TrimOutbox(mid) = %d, %v; want %d", n, err, trimBatch+101)
	}
	wantStats(t, s, total-trimBatch-101, seqs[trimBatch+101])
	checkJournal(t, s)
	// Paging the rest.
	var got []uint64
	for after := uint64(0); ; {
		page, _ := outboxSeqs(t, s, after, 100)
		if len(page) == 0 {
			break
		}
		got = append(got, page...)
		after = page[len(page)-1]
	}
	if !slices.Equal(got, seqs[trimBatch+101:]) {
		t.Fatalf("outbox pages: %d seqs, want %d", len(got), total-trimBatch-101)
	}
	if n, err := s.TrimOutbox(math.MaxUint64); err != nil || n != total-trimBatch-101 {
		t.Fatalf("TrimOutbox(max) = %d, %v", n, err)
	}
	wantStats(t, s, 0, 0)
	st := checkJournal(t, s)
	if len(st.entries) != (total+2)/3 {
		t.Fatalf("%d entries left, want the %d with a job", len(st.entries), (total+2)/3)
	}
	for i := 0; i < total; i += 3 {
		if err := s.JobDone(seqs[i], "t"); err != nil {
			t.Fatal(err)
		}
	}
	if st := checkJournal(t, s); len(st.entries) != 0 {
		t.Fatalf("%d entries left", len(st.entries))
	}
}

func TestApplyLoggedState(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t, nil)
	wantState := func(key, want string, found bool) {
		t.Helper()
		v, ok, err := s.ImportState(key)
		if err != nil || ok != found || (found && string(v) != want) {
			t.Fatalf("ImportState(%q) = %q, %v, %v; want %q, %v", key, v, ok, err, want, found)
		}
	}

	// State alone (a relay applying a remote write whose replicas are all
	// local): no entry, but the state with the data.
	outs, seq, err := s.ApplyLogged(ctx, []Mutation{putM(shA, "r1", "x", ver(10, 0, 2))}, nil, nil,
		LogOptions{State: map[string][]byte{"relay/site2": []byte("41")}})
	if err != nil || seq != 0 || len(outs) != 1 || outs[0] != Applied {
		t.Fatalf("state alone: %v %d %v", outs, seq, err)
	}
	wantState("relay/site2", "41", true)
	if s.JournalSeq() != 0 {
		t.Fatalf("JournalSeq %d, want 0", s.JournalSeq())
	}

	// With jobs (other replicas) and two states.
	seq = logged(t, s, []Mutation{putM(shA, "r2", "y", ver(9, 0, 2))}, "r2", []string{"n2/s1"},
		LogOptions{State: map[string][]byte{"relay/site2": []byte("42"), "relay/site3": []byte("7")}})
	if seq == 0 {
		t.Fatal("no entry recorded")
	}
	wantState("relay/site2", "42", true)
	wantState("relay/site3", "7", true)

	before := s.JournalSeq()
	// Invalid state keys: nothing is applied.
	for _, key := range []string{"", strings.Repeat("k", MaxImportStateKeyBytes+1)} {
		_, _, err := s.ApplyLogged(ctx, []Mutation{putM(shA, "bad", "z", ver(8, 0, 2))}, []byte("bad"), []string{"n2/s1"},
			LogOptions{Outbox: true, State: map[string][]byte{"relay/site2": []byte("99"), key: []byte("1")}})
		wantErr(t, err, ErrInvalid, "import state key")
	}
	// A batch that fails (a mutation of an unknown shard): neither data,
	// entry, marker, job nor state.
	_, _, err = s.ApplyLogged(ctx,
		[]Mutation{putM(shA, "bad", "z", ver(8, 0, 2)), putM("nope", "bad", "z", ver(8, 0, 2))},
		[]byte("bad"), []string{"n2/s1"},
		LogOptions{Outbox: true, State: map[string][]byte{"relay/site2": []byte("99"), "relay/new": []byte("1")}})
	wantErr(t, err, ErrShardNotFound)
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	_, _, err = s.ApplyLogged(cctx, nil, []byte("bad"), nil, LogOptions{Outbox: true, State: map[string][]byte{"relay/new": []byte("1")}})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled: %v", err)
	}
	if _, ok := getValue(t, s, shA, "bad"); ok {
		t.Fatal("a failed batch's mutation is applied")
	}
	wantState("relay/site2", "42", true)
	wantState("relay/new", "", false)
	if s.JournalSeq() != before {
		t.Fatalf("JournalSeq %d, want %d", s.JournalSeq(), before)
	}
	wantStats(t, s, 0, 0)
	if jobs, _ := s.Jobs(false, 0, "", 10); len(jobs) != 1 || jobs[0].Seq != seq {
		t.Fatalf("jobs %+v", jobs)
	}
	checkJournal(t, s)

	// A batch that failed after taking its seq leaves no trace in memory;
	// one whose entry is there (its sync failed after the commit) is kept.
	ghost := s.beginEntry(2, true)
	s.abandonEntry(ghost)
	wantStats(t, s, 0, 0)
	s.journal.mu.Lock()
	_, counted := s.journal.jobs[ghost]
	s.journal.mu.Unlock()
	if counted {
		t.Fatal("abandoned entry still counted")
	}
	kept := logged(t, s, nil, "kept", nil, LogOptions{Outbox: true})
	s.abandonEntry(kept)
	wantStats(t, s, 1, kept)
	checkJournal(t, s)

	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.ApplyLogged(ctx, nil, []byte("x"), nil, LogOptions{Outbox: true}); !errors.Is(err, ErrClosed) {
		t.Fatalf("closed: %v", err)
	}
	if _, err := s.OutboxEntries(0, 1); !errors.Is(err, ErrClosed) {
		t.Fatalf("OutboxEntries closed: %v", err)
	}
	if _, err := s.TrimOutbox(1); !errors.Is(err, ErrClosed) {
		t.Fatalf("TrimOutbox closed: %v", err)
	}
	if _, _, _, err := s.OutboxStats(); !errors.Is(err, ErrClosed) {
		t.Fatalf("OutboxStats closed: %v", err)
	}
}

func TestOutboxRestart(t *testing.T) {
	opts := testOptions()
	s := openStore(t, "db", opts)
	setupSchema(t, s)
	reopen := func() {
		t.Helper()
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		s = openStore(t, "db", opts)
	}
	a := logged(t, s, []Mutation{putM(shA, "a", "1", ver(5, 0, 1))}, "a", []string{"t1", "t2"}, LogOptions{Outbox: true})
	b := logged(t, s, nil, "b", nil, LogOptions{Outbox: true})
	c := logged(t, s, nil, "c", []string{"t1"}, LogOptions{})
	d := logged(t, s, nil, "d", []string{"t1"}, LogOptions{Outbox: true, State: map[string][]byte{"relay/x": []byte("d")}})
	if err := s.JobDone(a, "t1"); err != nil {
		t.Fatal(err)
	}
	if err := s.JobFailed(Job{Seq: d, Target: "t1", Attempts: 1}, true); err != nil {
		t.Fatal(err)
	}
	before := checkJournal(t, s)

	reopen()
	after := checkJournal(t, s)
	if fmt.Sprint(before) != fmt.Sprint(after) {
		t.Fatalf("journal changed by a restart:\n%v\n%v", before, after)
	}
	wantStats(t, s, 3, a)
	if seqs, data := outboxSeqs(t, s, 0, 10); !slices.Equal(seqs, []uint64{a, b, d}) || !slices.Equal(data, []string{"a", "b", "d"}) {
		t.Fatalf("outbox after restart: %v %q", seqs, data)
	}
	if v, ok, err := s.ImportState("relay/x"); err != nil || !ok || string(v) != "d" {
		t.Fatalf("state after restart: %q %v %v", v, ok, err)
	}
	if s.JournalSeq() != d {
		t.Fatalf("JournalSeq %d, want %d", s.JournalSeq(), d)
	}
	// Jobs of the earlier process (no in-memory count): a marker still
	// holds the entry; without one the entry goes.
	if err := s.JobDone(a, "t2"); err != nil {
		t.Fatal(err)
	}
	wantEntry(t, s, a, true)
	if err := s.JobDone(c, "t1"); err != nil {
		t.Fatal(err)
	}
	wantEntry(t, s, c, false)
	if n, err := s.TrimOutbox(b); err != nil || n != 2 {
		t.Fatalf("TrimOutbox(%d) = %d, %v", b, n, err)
	}
	wantEntry(t, s, a, false)
	wantEntry(t, s, b, false)
	checkJournal(t, s)

	reopen()
	wantStats(t, s, 1, d)
	if n, err := s.TrimOutbox(d); err != nil || n != 1 {
		t.Fatalf("TrimOutbox(%d) = %d, %v", d, n, err)
	}
	wantEntry(t, s, d, true) // its error job holds it (found by a scan)
	reopen()
	wantStats(t, s, 0, 0)
	if err := s.DropErrorJob(d, "t1"); err != nil {
		t.Fatal(err)
	}
	wantEntry(t, s, d, false)
	if st := checkJournal(t, s); len(st.entries) != 0 {
		t.Fatalf("journal not empty: %v", st.entries)
	}

	// The journal is empty, but remote sites saw seqs up to d: the sequence
	// continues above them.
	reopen()
	if s.JournalSeq() != d {
		t.Fatalf("JournalSeq after restart with an empty journal: %d, want %d", s.JournalSeq(), d)
	}
	if e := logged(t, s, nil, "e", nil, LogOptions{Outbox: true}); e != d+1 {
		t.Fatalf("seq after restart %d, want %d", e, d+1)
	}
}

// TestOutboxConcurrent interleaves writers (ApplyLogged), one delivery
// worker per target (JobDone, JobFailed, RetryErrorJob, DropErrorJob), and
// a trimmer (TrimOutbox, OutboxEntries, OutboxStats); then restarts and
// drains everything concurrently.
func TestOutboxConcurrent(t *testing.T) {
	r := testRand(t)
	opts := testOptions()
	s := openStore(t, "db", opts)
	setupSchema(t, s)
	ctx := context.Background()

	const (
		writers   = 4
		perWriter = 250
		nTargets  = 4
	)
	type created struct {
		seq     uint64
		outbox  bool
		targets []string
	}
	var (
		createdMu sync.Mutex
		all       []created
	)
	chans := make([]chan uint64, nTargets)
	for i := range chans {
		chans[i] = make(chan uint64, writers*perWriter)
	}
	seeds := make([]uint64, writers+nTargets+1)
	for i := range seeds {
		seeds[i] = r.Uint64()
	}

	// Workers: each owns one target, so a job it knows of exists, and
	// with it the entry.
	type jobState struct{ errorQueue bool }
	left := make([]map[uint64]jobState, nTargets)
	var workers sync.WaitGroup
	for w := range nTargets {
		workers.Add(1)
		go func() {
			defer workers.Done()
			rr := rand.New(rand.NewPCG(seeds[writers+w], 1))
			target := "t" + strconv.Itoa(w)
			out := map[uint64]jobState{}
			// Parked jobs are never delivered here: they remain for the
			// checks and the drain.
			parked := map[uint64]jobState{}
			defer func() {
				maps.Copy(out, parked)
				left[w] = out
			}()
			receive := func(seq uint64) {
				if rr.IntN(6) == 0 {
					var st jobState
					if rr.IntN(2) == 0 {
						if err := s.JobFailed(Job{Seq: seq, Target: target, Attempts: 1}, true); err != nil {
							t.Errorf("%s: park %d: %v", target, seq, err)
						}
						st.errorQueue = true
					}
					parked[seq] = st
				} else {
					out[seq] = jobState{}
				}
			}
			ch, closed := chans[w], false
			for n := 0; ; n++ {
				select {
				case seq, ok := <-ch:
					if !ok {
						ch, closed = nil, true
					} else {
						receive(seq)
					}
					continue
				default:
				}
				if len(out) == 0 || (closed && rr.IntN(4) == 0) {
					if closed {
						return // leave some jobs for the checks
					}
					seq, ok := <-ch
					if !ok {
						ch, closed = nil, true
					} else {
						receive(seq)
					}
					continue
				}
				keys := slices.Sorted(maps.Keys(out))
				seq := keys[rr.IntN(len(keys))]
				if _, err := s.JournalEntry(seq); err != nil {
					t.Errorf("%s: entry %d of a live job: %v", target, seq, err)
					return
				}
				var err error
				st := out[seq]
				switch p := rr.IntN(100); {
				case st.errorQueue && p < 50:
					err = s.RetryErrorJob(seq, target)
					out[seq] = jobState{}
				case st.errorQueue:
					err = s.DropErrorJob(seq, target)
					delete(out, seq)
				case p < 55:
					err = s.JobDone(seq, target)
					delete(out, seq)
				case p < 80:
					err = s.JobFailed(Job{Seq: seq, Target: target, Attempts: n, LastError: "x"}, false)
				default:
					err = s.JobFailed(Job{Seq: seq, Target: target, Attempts: n}, true)
					out[seq] = jobState{errorQueue: true}
				}
				if err != nil {
					t.Errorf("%s: job %d: %v", target, seq, err)
					return
				}
			}
		}()
	}

	var maxTrim struct {
		sync.Mutex
		upTo uint64
	}
	stop := make(chan struct{})
	var trimmer sync.WaitGroup
	trimmer.Add(1)
	go func() {
		defer trimmer.Done()
		rr := rand.New(rand.NewPCG(seeds[writers+nTargets], 2))
		for {
			select {
			case <-stop:
				return
			default:
			}
			cur := s.JournalSeq()
			upTo := cur - min(cur, uint64(rr.IntN(40)))
			maxTrim.Lock()
			maxTrim.upTo = max(maxTrim.upTo, upTo)
			maxTrim.Unlock()
			if _, err := s.TrimOutbox(upTo); err != nil {
				t.Errorf("TrimOutbox(%d): %v", upTo, err)
				return
			}
			after := cur - min(cur, uint64(rr.IntN(50)))
			es, err := s.OutboxEntries(after, 1+rr.IntN(20))
			if err != nil {
				t.Errorf("OutboxEntries: %v", err)
				return
			}
			for i, e := range es {
				if e.Seq <= after || (i > 0 && e.Seq <= es[i-1].Seq) || !strings.HasPrefix(string(e.Data), "w") {
					t.Errorf("OutboxEntries(%d): %d %q out of order or bad", after, e.Seq, e.Data)
				}
			}
			if n, oldest, newest, err := s.OutboxStats(); err != nil || (n == 0) != (oldest == 0) || newest < oldest {
				t.Errorf("OutboxStats = %d, %d, %d, %v", n, oldest, newest, err)
			}
		}
	}()

	var writersWG sync.WaitGroup
	for w := range writers {
		writersWG.Add(1)
		go func() {
			defer writersWG.Done()
			rr := rand.New(rand.NewPCG(seeds[w], 3))
			for i := range perWriter {
				var targets []string
				var idx []int
				for ti := range nTargets {
					if rr.IntN(3) == 0 {
						targets = append(targets, "t"+strconv.Itoa(ti))
						idx = append(idx, ti)
					}
				}
				o := LogOptions{Outbox: rr.IntN(10) < 6}
				if rr.IntN(4) == 0 {
					o.State = map[string][]byte{"relay/w" + strconv.Itoa(w): []byte(strconv.Itoa(i))}
				}
				key := fmt.Sprintf("w%d-%d", w, i)
				muts := []Mutation{putM(shA, key, "v", ver(int64(1000-i), 0, 1))}
				_, seq, err := s.ApplyLogged(ctx, muts, []byte(key), targets, o)
				if err != nil {
					t.Errorf("ApplyLogged: %v", err)
					return
				}
				if (seq != 0) != (len(targets) > 0 || o.Outbox) {
					t.Errorf("ApplyLogged %s: seq %d with %d targets, outbox %v", key, seq, len(targets), o.Outbox)
				}
				if seq == 0 {
					continue
				}
				createdMu.Lock()
				all = append(all, created{seq: seq, outbox: o.Outbox, targets: targets})
				createdMu.Unlock()
				for _, ti := range idx {
					chans[ti] <- seq
				}
			}
		}()
	}
	writersWG.Wait()
	for _, c := range chans {
		close(c)
	}
	// Stop trimming first, so that markers remain for the checks.
	close(stop)
	trimmer.Wait()
	workers.Wait()
	if t.Failed() {
		t.FailNow()
	}

	// Quiescent: compare the journal with what the goroutines did.
	check := func() {
		t.Helper()
		st := checkJournal(t, s)
		maxTrim.Lock()
		trimmed := maxTrim.upTo
		maxTrim.Unlock()
		for _, c := range all {
			if c.outbox && c.seq > trimmed && !st.markers[c.seq] {
				t.Errorf("marker %d (above every trim, %d) lost", c.seq, trimmed)
			}
			if !c.outbox && st.markers[c.seq] {
				t.Errorf("marker %d of an entry without outbox", c.seq)
			}
		}
		for w := range nTargets {
			target := "t" + strconv.Itoa(w)
			for seq, js := range left[w] {
				q := st.jobs
				if js.errorQueue {
					q = st.errJobs
				}
				if !slices.Contains(q[seq], target) {
					t.Errorf("job %d %s (error queue %v) lost", seq, target, js.errorQueue)
				}
			}
		}
		var pending, failed int
		for _, ts := range st.jobs {
			pending += len(ts)
		}
		for _, ts := range st.errJobs {
			failed += len(ts)
		}
		n := 0
		for w := range nTargets {
			n += len(left[w])
		}
		if pending+failed != n {
			t.Errorf("%d pending and %d failed jobs in the database, the workers left %d", pending, failed, n)
		}
	}
	check()
	st := readJournal(t, s)
	t.Logf("%d entries recorded; left: %d entries, %d markers, %d with pending jobs, %d with error jobs",
		len(all), len(st.entries), len(st.markers), len(st.jobs), len(st.errJobs))

	// Restart, then drain everything concurrently with trimming.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openStore(t, "db", opts)
	check()
	last := s.JournalSeq()
	var drain sync.WaitGroup
	for w := range nTargets {
		drain.Add(1)
		go func() {
			defer drain.Done()
			target := "t" + strconv.Itoa(w)
			for _, seq := range slices.Sorted(maps.Keys(left[w])) {
				var err error
				if left[w][seq].errorQueue {
					err = s.DropErrorJob(seq, target)
				} else {
					err = s.JobDone(seq, target)
				}
				if err != nil {
					t.Errorf("%s: drain %d: %v", target, seq, err)
				}
			}
		}()
	}
	drain.Add(1)
	go func() {
		defer drain.Done()
		for upTo := uint64(0); upTo < last+8; upTo += 8 {
			if _, err := s.TrimOutbox(upTo); err != nil {
				t.Errorf("TrimOutbox: %v", err)
			}
		}
	}()
	drain.Wait()
	if st := checkJournal(t, s); len(st.entries)+len(st.markers)+len(st.jobs)+len(st.errJobs) != 0 {
		t.Fatalf("journal not empty after draining: %d entries, %d markers", len(st.entries), len(st.markers))
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openStore(t, "db", opts)
	var lastOutbox uint64
	for _, c := range all {
		if c.outbox {
			lastOutbox = max(lastOutbox, c.seq)
		}
	}
	if s.JournalSeq() < lastOutbox {
		t.Fatalf("JournalSeq %d after restart with an empty journal, below the last published %d", s.JournalSeq(), lastOutbox)
	}
}

// TestOutboxPublisherMissesNothing runs concurrent outbox writers against a
// reader that advances its position past every entry it is given, as the
// publisher does: every entry is read exactly once, even though batches
// become visible out of sequence order.
func TestOutboxPublisherMissesNothing(t *testing.T) {
	s := newTestStore(t, nil)
	const writers, each = 8, 300
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				logged(t, s, nil, fmt.Sprintf("w%d-%d", w, i), nil, LogOptions{Outbox: true})
			}
		})
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	seen := map[uint64]bool{}
	var pos uint64
	for {
		finished := false
		select {
		case <-done:
			finished = true
		default:
		}
		es, err := s.OutboxEntries(pos, 100)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range es {
			if seen[e.Seq] {
				t.Fatalf("entry %d read twice", e.Seq)
			}
			seen[e.Seq], pos = true, e.Seq
		}
		if finished && len(es) == 0 {
			break
		}
	}
	if len(seen) != writers*each {
		t.Fatalf("read %d outbox entries of %d written: the reader passed some", len(seen), writers*each)
	}
}
