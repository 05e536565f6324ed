package ops

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"sync"
	"time"

	pb "github.com/aviarydb/aviary/api/aviarypb"
	"github.com/spf13/cobra"
)

// ErrNotConfirmed is returned by a destructive command run without --yes.
var ErrNotConfirmed = errors.New("ops: not confirmed")

// ErrPartial is returned when some nodes could not be asked.
var ErrPartial = errors.New("ops: some nodes did not answer")

// nodeRef is a node to ask: its id and gRPC address.
type nodeRef struct{ id, addr string }

// selectNodes returns the nodes a jobs command asks: every node of the map
// with all, the node id, or else the node at --addr.
func (s *session) selectNodes(ctx context.Context, id string, all bool) ([]nodeRef, error) {
	if all && id != "" {
		return nil, errors.New("give --node or --all, not both")
	}
	if !all && id == "" {
		p := s.probeNode(ctx, "", s.o.addr)
		if !p.Reachable {
			return nil, fmt.Errorf("ask %s: %s", s.o.addr, p.Error)
		}
		return []nodeRef{{p.Node, s.o.addr}}, nil
	}
	m, err := s.siteMap(ctx)
	if err != nil {
		return nil, err
	}
	if id != "" {
		addr, err := nodeAddr(m, id)
		if err != nil {
			return nil, err
		}
		return []nodeRef{{id, addr}}, nil
	}
	var out []nodeRef
	for _, id := range sortedNodeIDs(m) {
		out = append(out, nodeRef{id, m.Nodes[id].GRPCAddr})
	}
	return out, nil
}

// jobRow is one router job of one node.
type jobRow struct {
	Node         string `json:"node"`
	Seq          uint64 `json:"seq"`
	Target       string `json:"target"`
	Attempts     int32  `json:"attempts"`
	LastError    string `json:"last_error,omitempty"`
	FailedUnixMS int64  `json:"failed_unix_ms,omitempty"`
	NextUnixMS   int64  `json:"next_unix_ms,omitempty"`
}

// jobList is the jobs of several nodes, and the nodes that did not answer.
type jobList struct {
	Jobs      []jobRow          `json:"jobs"`
	Truncated []string          `json:"truncated"`
	Errors    map[string]string `json:"errors,omitempty"`
}

// listJobs asks each node for its pending jobs, or its error queue.
func (s *session) listJobs(ctx context.Context, nodes []nodeRef, errorQueue bool, limit int) jobList {
	per := make([][]jobRow, len(nodes))
	trunc := make([]bool, len(nodes))
	errs := make([]error, len(nodes))
	var wg sync.WaitGroup
	for i, n := range nodes {
		wg.Go(func() {
			a, err := s.admin(n.addr)
			if err != nil {
				errs[i] = err
				return
			}
			rctx, cancel := s.rpcCtx(ctx)
			defer cancel()
			resp, err := a.ListJobs(rctx, &pb.ListJobsRequest{ErrorQueue: errorQueue, Limit: int32(limit)})
			if err != nil {
				errs[i] = s.rpcErr("list jobs of", n.addr, err)
				return
			}
			trunc[i] = resp.Truncated
			for _, j := range resp.Jobs {
				per[i] = append(per[i], jobRow{Node: n.id, Seq: j.Seq, Target: j.Target, Attempts: j.Attempts,
					LastError: j.LastError, FailedUnixMS: j.FailedUnixMs, NextUnixMS: j.NextUnixMs})
			}
		})
	}
	wg.Wait()
	l := jobList{Jobs: []jobRow{}, Truncated: []string{}}
	for i, n := range nodes {
		l.Jobs = append(l.Jobs, per[i]...)
		if trunc[i] {
			l.Truncated = append(l.Truncated, n.id)
		}
		if errs[i] != nil {
			if l.Errors == nil {
				l.Errors = map[string]string{}
			}
			l.Errors[n.id] = errs[i].Error()
		}
	}
	return l
}

// printJobs prints a job list; the error queue shows when jobs failed
// instead of when they run next.
func (s *session) printJobs(l jobList, errorQueue bool) error {
	now := time.Now()
	last := "NEXT"
	if errorQueue {
		last = "FAILED"
	}
	t := newTable("NODE", "SEQ", "TARGET", "ATTEMPTS", last, "LAST ERROR")
	for _, j := range l.Jobs {
		when := "-"
		if ms := j.NextUnixMS; !errorQueue && ms != 0 {
			when = relTime(time.UnixMilli(ms), now)
		} else if ms := j.FailedUnixMS; errorQueue && ms != 0 {
			when = relTime(time.UnixMilli(ms), now)
		}
		t.add(j.Node, strconv.FormatUint(j.Seq, 10), j.Target, strconv.Itoa(int(j.Attempts)), when, dash(oneLine(j.LastError)))
	}
	what := "pending jobs"
	if errorQueue {
		what = "jobs in the error queue"
	}
	switch {
	case s.o.json:
		if err := s.printJSON(l); err != nil {
			return err
		}
	case len(l.Jobs) == 0:
		fmt.Fprintf(s.out, "no %s\n", what)
	default:
		if err := s.printTable(t); err != nil {
			return err
		}
	}
	if !s.o.json {
		for _, id := range l.Truncated {
			fmt.Fprintf(s.out, "node %s has more %s than listed (raise --limit)\n", id, what)
		}
	}
	if len(l.Errors) > 0 {
		for _, id := range slices.Sorted(maps.Keys(l.Errors)) {
			fmt.Fprintf(s.errOut, "node %s: %s\n", id, l.Errors[id])
		}
		return fmt.Errorf("%w: %d of them could not list their jobs", ErrPartial, len(l.Errors))
	}
	return nil
}

// jobFlags are the node selection flags of jobs and errors list.
type jobFlags struct {
	node  string
	all   bool
	limit int
}

func (f *jobFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.node, "node", "", "ask this node (by id) instead of the one at --addr")
	cmd.Flags().BoolVar(&f.all, "all", false, "ask every node of the site")
	cmd.Flags().IntVar(&f.limit, "limit", 1000, "most jobs listed per node")
}

func (f *jobFlags) run(errorQueue bool) func(ctx context.Context, s *session, _ []string) error {
	return func(ctx context.Context, s *session, _ []string) error {
		if f.limit < 1 {
			return fmt.Errorf("--limit %d: must be at least 1", f.limit)
		}
		nodes, err := s.selectNodes(ctx, f.node, f.all)
		if err != nil {
			return err
		}
		return s.printJobs(s.listJobs(ctx, nodes, errorQueue, f.limit), errorQueue)
	}
}

func newJobsCommand(o *options) *cobra.Command {
	var f jobFlags
	cmd := &cobra.Command{
		Use:   "jobs [--node ID | --all]",
		Short: "List pending router jobs: writes still owed to replicas",
		Long: `List the router jobs of the node at --addr (or of node ID, or of every node
with --all): writes the node journaled and still has to deliver to a replica,
with the number of attempts, the last error and when the next attempt is due.
Jobs that keep failing move to the error queue (see "errors list").`,
		Example: `  ops jobs --all
  ops jobs --node node-1 --json`,
		Args: cobra.NoArgs,
	}
	cmd.RunE = o.runner(f.run(false))
	f.register(cmd)
	return cmd
}

func newErrorsCommand(o *options) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "errors",
		Short: "List, retry or drop router jobs in the error queue",
		Long: `A router job that failed too often moves to its node's error queue: the
replica it targets misses that write until the job is retried, or never gets
it from that node if the job is dropped.`,
		Example: `  ops errors list --all
  ops errors retry node-0 1234 node-2/default-003-node-2`,
		RunE: groupRunE,
	}
	var f jobFlags
	list := &cobra.Command{
		Use:   "list [--node ID | --all]",
		Short: "List the jobs in the error queue",
		Long: `List the jobs in the error queue of the node at --addr (or of node ID, or
of every node with --all), with the time each gave up and its last error.`,
		Example: `  ops errors list --all`,
		Args:    cobra.NoArgs,
	}
	list.RunE = o.runner(f.run(true))
	f.register(list)

	retry := &cobra.Command{
		Use:   "retry NODE SEQ TARGET",
		Short: "Move a job from the error queue back to the pending jobs",
		Long: `Move the job SEQ to TARGET ("node/shard") of node NODE from its error queue
back to its pending jobs; the router delivers it again.`,
		Example: `  ops errors retry node-0 1234 node-2/default-003-node-2`,
		Args:    cobra.ExactArgs(3),
		RunE: o.runner(func(ctx context.Context, s *session, args []string) error {
			return s.jobAction(ctx, args, false)
		}),
	}
	var yes bool
	drop := &cobra.Command{
		Use:   "drop NODE SEQ TARGET --yes",
		Short: "Delete a job from the error queue",
		Long: `Delete the job SEQ to TARGET ("node/shard") from the error queue of node
NODE: that replica will never get this write from NODE, so it may stay
behind the others until it is repaired. Asks for --yes.`,
		Example: `  ops errors drop node-0 1234 node-2/default-003-node-2 --yes`,
		Args:    cobra.ExactArgs(3),
		RunE: o.runner(func(ctx context.Context, s *session, args []string) error {
			if !yes {
				return fmt.Errorf("%w: dropping job %s means %s never gets that write from %s; run again with --yes", ErrNotConfirmed, args[1], args[2], args[0])
			}
			return s.jobAction(ctx, args, true)
		}),
	}
	drop.Flags().BoolVar(&yes, "yes", false, "confirm that the write is dropped for that replica")
	cmd.AddCommand(list, retry, drop)
	return cmd
}

// jobAction retries or drops the job NODE SEQ TARGET of args.
func (s *session) jobAction(ctx context.Context, args []string, drop bool) error {
	seq, err := strconv.ParseUint(args[1], 10, 64)
	if err != nil {
		return fmt.Errorf("seq %q: want a whole number", args[1])
	}
	m, err := s.siteMap(ctx)
	if err != nil {
		return err
	}
	addr, err := nodeAddr(m, args[0])
	if err != nil {
		return err
	}
	a, err := s.admin(addr)
	if err != nil {
		return err
	}
	rctx, cancel := s.rpcCtx(ctx)
	defer cancel()
	ref := &pb.JobRef{Seq: seq, Target: args[2]}
	what := "retried"
	if drop {
		what = "dropped"
		_, err = a.DropJob(rctx, ref)
	} else {
		_, err = a.RetryJob(rctx, ref)
	}
	if err != nil {
		return s.rpcErr(map[bool]string{false: "retry job on", true: "drop job on"}[drop], addr, err)
	}
	if s.o.json {
		return s.printJSON(map[string]any{"node": args[0], "seq": seq, "target": args[2], "action": what})
	}
	_, err = fmt.Fprintf(s.out, "%s job %d to %s on %s\n", what, seq, args[2], args[0])
	return err
}
