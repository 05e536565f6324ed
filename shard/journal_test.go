package shard

import (
	"context"
	"errors"
	"slices"
	"testing"
)

func TestJournal(t *testing.T) {
	ctx := context.Background()
	opts := testOptions()
	s := openStore(t, "db", opts)
	seq1, err := s.JournalAppend(ctx, []byte("one"), []string{"a/s1", "b/s1"})
	if err != nil {
		t.Fatal(err)
	}
	seq2, err := s.JournalAppend(ctx, []byte("two"), []string{"a/s2"})
	if err != nil || seq2 != seq1+1 {
		t.Fatalf("seq2 %d (seq1 %d): %v", seq2, seq1, err)
	}
	jobs, err := s.Jobs(false, 0, "", 10)
	if err != nil || len(jobs) != 3 || jobs[0].Seq != seq1 || jobs[0].Target != "a/s1" || jobs[2].Target != "a/s2" {
		t.Fatalf("jobs %+v %v", jobs, err)
	}
	// Paging after a job.
	if jobs, _ := s.Jobs(false, seq1, "a/s1", 10); len(jobs) != 2 || jobs[0].Target != "b/s1" {
		t.Fatalf("jobs after a/s1: %+v", jobs)
	}

	if err := s.JobDone(seq1, "a/s1"); err != nil {
		t.Fatal(err)
	}
	if d, err := s.JournalEntry(seq1); err != nil || string(d) != "one" {
		t.Fatalf("entry with a job left: %q %v", d, err)
	}
	// A failed job keeps its attempts; moved to the error queue it is no
	// longer pending but still holds the entry.
	if err := s.JobFailed(Job{Seq: seq1, Target: "b/s1", Attempts: 3, LastError: "boom"}, true); err != nil {
		t.Fatal(err)
	}
	if jobs, _ := s.Jobs(false, 0, "", 10); len(jobs) != 1 || jobs[0].Seq != seq2 {
		t.Fatalf("pending after error: %+v", jobs)
	}
	ej, err := s.Jobs(true, 0, "", 10)
	if err != nil || len(ej) != 1 || ej[0].Attempts != 3 || ej[0].LastError != "boom" {
		t.Fatalf("error queue %+v %v", ej, err)
	}
	if _, err := s.JournalEntry(seq1); err != nil {
		t.Fatalf("entry of an error job: %v", err)
	}
	if err := s.RetryErrorJob(seq1, "b/s1"); err != nil {
		t.Fatal(err)
	}
	if err := s.RetryErrorJob(seq1, "b/s1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("retry twice: %v", err)
	}
	// Due now, attempts reset, and still marked as failed: a router's
	// retry loop delivers only jobs that failed (or that an earlier
	// process left), so without it the job would wait for a restart.
	if jobs, _ := s.Jobs(false, 0, "", 10); len(jobs) != 2 || jobs[0].Attempts != 0 || jobs[0].Failed.IsZero() || !jobs[0].Next.IsZero() {
		t.Fatalf("pending after retry: %+v", jobs)
	}
	if err := s.JobDone(seq1, "b/s1"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.JournalEntry(seq1); !errors.Is(err, ErrNotFound) {
		t.Fatalf("entry after its last job: %v", err)
	}

	// The sequence continues after a reopen.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openStore(t, "db", opts)
	seq3, err := s.JournalAppend(ctx, []byte("three"), []string{"a/s1"})
	if err != nil || seq3 != seq2+1 {
		t.Fatalf("seq after reopen %d, want %d: %v", seq3, seq2+1, err)
	}
	if err := s.JobFailed(Job{Seq: seq3, Target: "a/s1", Attempts: 9}, true); err != nil {
		t.Fatal(err)
	}
	if err := s.DropErrorJob(seq3, "a/s1"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.JournalEntry(seq3); !errors.Is(err, ErrNotFound) {
		t.Fatalf("entry after dropping its last job: %v", err)
	}
	if _, err := s.JournalAppend(ctx, []byte("x"), nil); !errors.Is(err, ErrInvalid) {
		t.Fatalf("entry without targets: %v", err)
	}
}

// TestJobDoneTwice: a job reported done twice (delivered twice) is removed
// once: the entry stays while another of its jobs is pending.
func TestJobDoneTwice(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, "db", testOptions())
	seq, err := s.JournalAppend(ctx, []byte("one"), []string{"a/s1", "b/s1"})
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := s.JobDone(seq, "a/s1"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.JournalEntry(seq); err != nil {
		t.Fatalf("entry with a job pending, after its other job was done twice: %v", err)
	}
	if err := s.JobDone(seq, "b/s1"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.JournalEntry(seq); !errors.Is(err, ErrNotFound) {
		t.Fatalf("entry after its last job: %v", err)
	}
}

// TestJobsSkipping: skipped jobs are passed over unread and not counted;
// a call visits a bounded number of jobs and says where it stopped; Jobs
// pages on over any number of such calls.
func TestJobsSkipping(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, "db", testOptions())
	const n = 100
	var seqs []uint64
	for i := range n {
		target := "down/s"
		if i%10 == 9 {
			target = "up/s"
		}
		seq, err := s.JournalAppend(ctx, []byte("e"), []string{target})
		if err != nil {
			t.Fatal(err)
		}
		seqs = append(seqs, seq)
	}
	skipDown := func(_ uint64, target []byte) bool { return string(target) == "down/s" }

	// Every job listed is an up one, in order, across calls.
	var got []uint64
	var after uint64
	var afterTarget string
	for calls := 0; ; calls++ {
		if calls > n {
			t.Fatal("JobsSkipping never said it was done")
		}
		jobs, page, err := s.JobsSkipping(false, after, afterTarget, 2, skipDown)
		if err != nil {
			t.Fatal(err)
		}
		for _, j := range jobs {
			if j.Target != "up/s" {
				t.Fatalf("listed a skipped job: %+v", j)
			}
			got = append(got, j.Seq)
		}
		if page.Done {
			break
		}
		after, afterTarget = page.Seq, page.Target
	}
	var want []uint64
	for i, seq := range seqs {
		if i%10 == 9 {
			want = append(want, seq)
		}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("listed %v, want %v", got, want)
	}

	// A page that ends on the visit bound after a listed job resumes
	// after the last job it passed over.
	ends := func(seq uint64, _ []byte) bool { return seq != seqs[0] && seq != seqs[n-1] }
	jobs, page, err := s.JobsSkipping(false, 0, "", 2, ends)
	if err != nil || len(jobs) != 1 || jobs[0].Seq != seqs[0] || page.Done || page.Seq != seqs[31] {
		t.Fatalf("first page: %d jobs, page %+v, %v; want seq %d listed, stopped at seq %d", len(jobs), page, err, seqs[0], seqs[31])
	}
	got = nil
	for page.Done == false {
		if jobs, page, err = s.JobsSkipping(false, page.Seq, page.Target, 2, ends); err != nil {
			t.Fatal(err)
		}
		for _, j := range jobs {
			got = append(got, j.Seq)
		}
	}
	if !slices.Equal(got, []uint64{seqs[n-1]}) {
		t.Fatalf("later pages listed %v, want only seq %d", got, seqs[n-1])
	}

	// Skipping everything: a call stops after 16 × limit jobs.
	jobs, page, err = s.JobsSkipping(false, 0, "", 1, func(uint64, []byte) bool { return true })
	if err != nil || len(jobs) != 0 || page.Done || page.Seq != seqs[15] {
		t.Fatalf("skipping every job with limit 1: %d jobs, page %+v, %v; want none, stopped at seq %d", len(jobs), page, err, seqs[15])
	}
	if jobs, err := s.Jobs(false, 0, "", 1000); err != nil || len(jobs) != n {
		t.Fatalf("Jobs listed %d of %d: %v", len(jobs), n, err)
	}
}
