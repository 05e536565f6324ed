package node

import (
	"slices"

	"github.com/aviarydb/aviary/gizzard"
	"github.com/aviarydb/aviary/timeline"
	"github.com/aviarydb/aviary/timeline/home"
	"github.com/prometheus/client_golang/prometheus"
)

// newTimelines builds the node's Timelines service, with a timeline store
// if the node has the timeline role.
func (n *Node) newTimelines(reg prometheus.Registerer) error {
	var st *timeline.Store
	if n.cfg.Timeline {
		var err error
		if st, err = timeline.NewStore(timeline.Options{Capacity: n.cfg.Timelines.Capacity}); err != nil {
			return err
		}
	}
	s, err := home.New(home.Config{
		NodeID:             n.cfg.NodeID,
		Store:              st,
		Data:               &dataServer{n: n},
		Dial:               n.remotes.conn,
		NewID:              func() (uint64, error) { return uint64(n.ids.Next()), nil },
		Capacity:           n.cfg.Timelines.Capacity,
		CelebrityFollowers: n.cfg.Timelines.CelebrityFollowers,
		FanoutPartitions:   n.cfg.Timelines.FanoutPartitions,
		FanoutLinger:       n.cfg.Timelines.FanoutLinger,
		HedgeMin:           n.cfg.Timelines.HedgeMin,
		HedgeMax:           n.cfg.Timelines.HedgeMax,
		RepairQueue:        n.cfg.Timelines.RepairQueue,
		ReplicaTimeout:     n.cfg.ReplicaTimeout,
		Logger:             n.log,
		OnDelivered:        n.cfg.Timelines.OnDelivered,
	}, reg)
	if err != nil {
		return err
	}
	n.timelines = s
	return nil
}

// timelineMembers is what the timelines need of a map: the timeline nodes
// and the sites.
func timelineMembers(m *gizzard.Map, site uint32) home.Members {
	ms := home.Members{Site: site}
	// SetMembers orders the nodes itself.
	for id, nd := range m.Nodes {
		if nd.Timeline {
			ms.Timeline = append(ms.Timeline, home.Member{ID: id, Addr: nd.GRPCAddr})
		}
	}
	for _, st := range m.Sites {
		ms.Sites = append(ms.Sites, st.ID)
	}
	slices.Sort(ms.Sites)
	return ms
}
