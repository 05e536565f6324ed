package home

import (
	"context"
	"fmt"
	"slices"

	pb "github.com/aviarydb/aviary/api/aviarypb"
	"github.com/aviarydb/aviary/timeline"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The replica calls act on this node's memory only.

// exportBatch is the most timelines of one ReplicaExport message.
const exportBatch = 64

func (s *Service) replicaStore() (*timeline.Store, error) {
	if s.store == nil {
		return nil, status.Errorf(codes.FailedPrecondition, "node %s does not have the timeline role", s.cfg.NodeID)
	}
	return s.store, nil
}

func toEntry(e *pb.TimelineEntry) timeline.Entry {
	return timeline.Entry{StatusID: e.GetStatusId(), AuthorID: e.GetAuthorId(), Flags: e.GetFlags()}
}

// fromEntries converts entries to messages, allocated together.
func fromEntries(es []timeline.Entry) []*pb.TimelineEntry {
	out := make([]*pb.TimelineEntry, len(es))
	msgs := make([]pb.TimelineEntry, len(es))
	for i, e := range es {
		m := &msgs[i]
		m.StatusId, m.AuthorId, m.Flags = e.StatusID, e.AuthorID, e.Flags
		out[i] = m
	}
	return out
}

func toEntries(es []*pb.TimelineEntry) []timeline.Entry {
	out := make([]timeline.Entry, len(es))
	for i, e := range es {
		out[i] = toEntry(e)
	}
	return out
}

// toColumns returns es as the columns of a packed answer (ReadRequest and
// ReplicaReadRequest's packed).
func toColumns(es []timeline.Entry) (ids, authors []uint64, flags []uint32) {
	ids, authors, flags = make([]uint64, len(es)), make([]uint64, len(es)), make([]uint32, len(es))
	for i, e := range es {
		ids[i], authors[i], flags[i] = e.StatusID, e.AuthorID, e.Flags
	}
	return ids, authors, flags
}

// checkColumns refuses a timeline whose columns differ in length.
func checkColumns(t *pb.ReplicaTimeline) error {
	if n := len(t.StatusIds); len(t.AuthorIds) != n || len(t.Flags) != n {
		return fmt.Errorf("timeline %d has columns of different lengths (status_ids %d, author_ids %d, flags %d)", t.Owner, n, len(t.AuthorIds), len(t.Flags))
	}
	return nil
}

// checkTimelines refuses timelines sent with owner 0 or columns of
// different lengths, naming the first.
func checkTimelines(ts []*pb.ReplicaTimeline) error {
	for i, t := range ts {
		if t.GetOwner() == 0 {
			return fmt.Errorf("timelines[%d]: owner is zero (unset)", i)
		}
		if err := checkColumns(t); err != nil {
			return fmt.Errorf("timelines[%d]: %v", i, err)
		}
	}
	return nil
}

// replicaEntries returns a timeline's entries, sent packed or not (a node
// that predates ReplicaReadRequest.packed or ReplicaExportRequest.packed
// sends entries), once checkColumns has passed it.
func replicaEntries(t *pb.ReplicaTimeline) []timeline.Entry {
	if len(t.StatusIds) == 0 {
		return toEntries(t.Entries)
	}
	out := make([]timeline.Entry, len(t.StatusIds))
	for i := range out {
		out[i] = timeline.Entry{StatusID: t.StatusIds[i], AuthorID: t.AuthorIds[i], Flags: t.Flags[i]}
	}
	return out
}

func checkEntry(e *pb.TimelineEntry) error {
	if e == nil {
		return status.Error(codes.InvalidArgument, "entry is missing")
	}
	if e.StatusId == 0 {
		return status.Error(codes.InvalidArgument, "entry: status_id is zero (unset)")
	}
	return nil
}

// ReplicaPush adds each delivery's entry to the timelines of its owners
// this node holds (or has reserved), and names the owners it holds not.
func (s *Service) ReplicaPush(ctx context.Context, r *pb.ReplicaPushRequest) (*pb.ReplicaPushResponse, error) {
	st, err := s.replicaStore()
	if err != nil {
		return nil, err
	}
	for i, d := range r.Deliveries {
		if err := checkEntry(d.GetEntry()); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "deliveries[%d]: %s", i, status.Convert(err).Message())
		}
	}
	resp := &pb.ReplicaPushResponse{}
	for _, d := range r.Deliveries {
		added, missing := st.PushManyMissing(d.Owners, toEntry(d.Entry), resp.Missing)
		resp.Added += uint32(added)
		resp.Missing = missing
	}
	s.metrics.replicaPushes.Add(float64(resp.Added))
	return resp, nil
}

// ReplicaRead reads timelines from this node's memory.
func (s *Service) ReplicaRead(ctx context.Context, r *pb.ReplicaReadRequest) (*pb.ReplicaReadResponse, error) {
	st, err := s.replicaStore()
	if err != nil {
		return nil, err
	}
	resp := &pb.ReplicaReadResponse{Results: make([]*pb.ReplicaTimeline, len(r.Queries))}
	for i, q := range r.Queries {
		resp.Results[i] = readLocal(st, q, r.Packed)
	}
	return resp, nil
}

// readLocal answers one query from st. It is on every read's path, so it
// takes the timeline's shard lock once (Store.Read), not once each for
// Has, Range and Len. With packed the entries go out as columns.
func readLocal(st *timeline.Store, q *pb.TimelineQuery, packed bool) *pb.ReplicaTimeline {
	es, n, held := st.Read(q.Owner, q.MaxId, q.SinceId, int(q.Limit))
	t := &pb.ReplicaTimeline{Owner: q.Owner, Held: held}
	if !held {
		return t
	}
	t.Length = uint32(n)
	if packed {
		t.StatusIds, t.AuthorIds, t.Flags = toColumns(es)
	} else {
		t.Entries = fromEntries(es)
	}
	return t
}

// ReplicaRemove removes an entry from this node's timelines.
func (s *Service) ReplicaRemove(ctx context.Context, r *pb.ReplicaRemoveRequest) (*pb.ReplicaRemoveResponse, error) {
	st, err := s.replicaStore()
	if err != nil {
		return nil, err
	}
	resp := &pb.ReplicaRemoveResponse{}
	for _, o := range r.Owners {
		if st.Remove(o, r.StatusId) {
			resp.Removed++
		}
	}
	return resp, nil
}

// ReplicaMerge installs or merges whole timelines.
func (s *Service) ReplicaMerge(ctx context.Context, r *pb.ReplicaMergeRequest) (*pb.ReplicaMergeResponse, error) {
	st, err := s.replicaStore()
	if err != nil {
		return nil, err
	}
	if err := checkTimelines(r.Timelines); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	for _, t := range r.Timelines {
		st.Merge(t.Owner, replicaEntries(t))
	}
	return &pb.ReplicaMergeResponse{Columns: true}, nil
}

// ReplicaReserve reserves timelines for a rebuild.
func (s *Service) ReplicaReserve(ctx context.Context, r *pb.ReplicaReserveRequest) (*pb.ReplicaReserveResponse, error) {
	st, err := s.replicaStore()
	if err != nil {
		return nil, err
	}
	st.Reserve(r.Owners...)
	return &pb.ReplicaReserveResponse{}, nil
}

// ReplicaExport streams the timelines this node holds that the rings over
// r.RingNodes place on r.Node.
func (s *Service) ReplicaExport(r *pb.ReplicaExportRequest, stream pb.Timelines_ReplicaExportServer) error {
	st, err := s.replicaStore()
	if err != nil {
		return err
	}
	if r.Node == "" || len(r.RingNodes) == 0 {
		return status.Error(codes.InvalidArgument, "node and ring_nodes are required")
	}
	return s.exportPlaced(stream.Context(), st, r.RingNodes, r.Node, r.Packed, stream.Send)
}

// exportPlaced sends the timelines st holds that the rings over ringNodes
// place on node, exportBatch at a time, until send fails or ctx ends; as
// columns if packed, else as entries.
func (s *Service) exportPlaced(ctx context.Context, st *timeline.Store, ringNodes []string, node string, packed bool, send func(*pb.ReplicaExportResponse) error) error {
	rings, err := timeline.NewRings(ringNodes, s.cfg.Rings)
	if err != nil {
		return status.Errorf(codes.InvalidArgument, "ring_nodes: %v", err)
	}
	// Whether node is a replica depends on the owner alone, so it is
	// decided before the copy: only the timelines sent are copied (with n
	// nodes, about 2/(n-1) of those held here).
	placed := func(owner uint64) bool {
		reps := rings.Replicas(owner)
		return slices.Contains(reps[:], node)
	}
	batch := &pb.ReplicaExportResponse{}
	var sendErr error
	st.EachWhere(placed, func(owner uint64, es []timeline.Entry) bool {
		t := &pb.ReplicaTimeline{Owner: owner, Held: true, Length: uint32(len(es))}
		if packed {
			t.StatusIds, t.AuthorIds, t.Flags = toColumns(es)
		} else {
			t.Entries = fromEntries(es)
		}
		batch.Timelines = append(batch.Timelines, t)
		if len(batch.Timelines) >= exportBatch {
			sendErr = send(batch)
			batch = &pb.ReplicaExportResponse{}
		}
		return sendErr == nil && ctx.Err() == nil
	})
	if sendErr != nil {
		return sendErr
	}
	if err := ctx.Err(); err != nil {
		return status.FromContextError(err).Err()
	}
	if len(batch.Timelines) > 0 {
		return send(batch)
	}
	return nil
}
