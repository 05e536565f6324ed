package gizzard

import (
	"errors"
	"testing"
)

func TestFences(t *testing.T) {
	m := baseMap(t) // version 1: r -> p1, p2; posts 0 -> r
	for _, id := range []string{"p1", "p2"} {
		if got := m.Fence(id); got != 1 {
			t.Fatalf("fence of %s after creation = %d, want 1", id, got)
		}
	}

	// A change that does not alter where writes go fences nothing.
	mustApply(t, m, addNode("n4"))
	mustApply(t, m, setWeight("r", "p1", 3))
	if got := m.Fence("p1"); got != 1 {
		t.Fatalf("fence of p1 after add_node and set_weight = %d, want 1", got)
	}

	// A write_only replica joins r: every leaf of r is fenced.
	mustApply(t, m, createPhysical("p3", "n3"), createLogical(KindWriteOnly, "w3", link("p3", 1)), addLink("r", "w3", 1))
	for _, id := range []string{"p1", "p2", "p3"} {
		if got := m.Fence(id); got != m.Version {
			t.Fatalf("fence of %s after adding a replica = %d, want %d", id, got, m.Version)
		}
	}
	added := m.Version

	// Promoting p3 changes reads, not writes: no fence moves.
	mustApply(t, m, removeLink("w3", "p3"), replaceChild("r", "w3", "p3"), deleteShard("w3"))
	if got := m.Fence("p1"); got != added {
		t.Fatalf("fence of p1 after promotion = %d, want %d", got, added)
	}

	// Removing p1 fences it (retired) and its former siblings.
	mustApply(t, m, removeLink("r", "p1"), deleteShard("p1"))
	for _, id := range []string{"p1", "p2", "p3"} {
		if got := m.Fence(id); got != m.Version {
			t.Fatalf("fence of %s after removing p1 = %d, want %d", id, got, m.Version)
		}
	}

	// A new forwarding into r fences r's leaves.
	mustApply(t, m, setFwd("timeline", 0, "r"))
	if got := m.Fence("p2"); got != m.Version {
		t.Fatalf("fence of p2 after a new forwarding = %d, want %d", got, m.Version)
	}
	if err := m.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestMigrationRecords(t *testing.T) {
	m := baseMap(t)
	g := Migration{ID: "mig-1", Kind: MigrateMove, Root: "r", Source: "p1", SourceNode: "n1", Dest: "p1-n3", DestNode: "n3", Wrapper: "p1-n3-wo", State: MigrationPlanned}
	set := func(g Migration, expect MigrationState) error {
		c := change(Step{Op: OpSetMigration, Migration: &g, Expect: expect})
		return m.Apply(c)
	}
	if err := set(g, ""); err != nil {
		t.Fatal(err)
	}
	if err := set(g, ""); err == nil {
		t.Fatal("creating an existing migration succeeded")
	}
	other := g
	other.ID, other.Dest = "mig-2", "p1-n2"
	if err := set(other, ""); err == nil {
		t.Fatal("a second migration of the same source was accepted")
	}
	g.State = MigrationCopying
	if err := set(g, MigrationCopied); !errors.Is(err, ErrStateMoved) {
		t.Fatalf("a compare-and-swap from the wrong state: %v, want ErrStateMoved", err)
	}
	if err := set(g, MigrationPlanned); err != nil {
		t.Fatal(err)
	}
	got := m.Migrations["mig-1"]
	if got.State != MigrationCopying || !got.Created.Equal(t0) || len(m.ActiveMigrations()) != 1 {
		t.Fatalf("record after update: %+v", got)
	}
	g.State = MigrationDone
	if err := set(g, MigrationCopying); err != nil {
		t.Fatal(err)
	}
	if len(m.ActiveMigrations()) != 0 {
		t.Fatal("a done migration is still active")
	}
	if err := set(other, ""); err != nil {
		t.Fatalf("a new migration of a source whose migration is done: %v", err)
	}
	bad := g
	bad.ID, bad.State = "mig-3", "flying"
	if err := set(bad, ""); err == nil {
		t.Fatal("an unknown state was accepted")
	}
	if err := m.Apply(change(Step{Op: OpRemoveMigration, MigrationID: "mig-1"})); err != nil {
		t.Fatal(err)
	}
	if _, ok := m.Migrations["mig-1"]; ok {
		t.Fatal("removed migration still there")
	}
	if err := m.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestSyncingNestedAndOperatorFields(t *testing.T) {
	m := baseMap(t)
	// r -> inner (replicating) -> p3: a migration of p3 has Root "inner".
	mustApply(t, m, createPhysical("p3", "n3"), createLogical(KindReplicating, "inner", link("p3", 1)), addLink("r", "inner", 1))
	g := Migration{ID: "mig", Kind: MigrateMove, Root: "inner", Source: "p3", SourceNode: "n3", Dest: "p3.1", DestNode: "n1", Wrapper: "p3.1-wo", State: MigrationPlanned}
	step := func(g Migration, expect MigrationState) {
		t.Helper()
		mustApply(t, m, Step{Op: OpSetMigration, Migration: &g, Expect: expect})
	}
	step(g, "")
	if m.TreeRoot("p3") != "r" || m.TreeRoot("inner") != "r" || m.TreeRoot("r") != "r" {
		t.Fatalf("tree roots: %s %s %s", m.TreeRoot("p3"), m.TreeRoot("inner"), m.TreeRoot("r"))
	}
	before := m.Fence("p1")
	stale := g // the driver's copy, read before the operator paused it
	paused := g
	paused.Paused, paused.Rate = true, "1MB/s"
	step(paused, MigrationPlanned)
	stale.State = MigrationVerified
	step(stale, MigrationPlanned)
	got := m.Migrations["mig"]
	if !got.Paused || got.Rate != "1MB/s" {
		t.Fatalf("a driver's step dropped the operator's pause or rate: %+v", got)
	}
	if !m.Syncing("r") || m.Syncing("inner") {
		t.Fatalf("Syncing: tree r %v, inner %v; want true, false", m.Syncing("r"), m.Syncing("inner"))
	}
	if m.Fence("p1") == before {
		t.Fatal("entering verified did not fence the tree's leaves")
	}
}
