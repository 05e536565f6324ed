package home

import (
	"testing"

	pb "github.com/aviarydb/aviary/api/aviarypb"
)

func TestChunkPush(t *testing.T) {
	req := &pb.ReplicaPushRequest{}
	total := 0
	for i, n := range []int{3, 7, 1, 10, 4} {
		d := &pb.Delivery{Entry: &pb.TimelineEntry{StatusId: uint64(i + 1)}}
		for o := range n {
			d.Owners = append(d.Owners, uint64(o+1))
		}
		total += n
		req.Deliveries = append(req.Deliveries, d)
	}
	for _, max := range []int{1, 4, 5, 25, 100} {
		chunks := chunkPush(req, max)
		got := map[[2]uint64]int{}
		n := 0
		for _, c := range chunks {
			k := 0
			for _, d := range c.Deliveries {
				k += len(d.Owners)
				for _, o := range d.Owners {
					got[[2]uint64{d.Entry.StatusId, o}]++
				}
			}
			if k > max || k == 0 {
				t.Fatalf("max %d: a chunk of %d owners", max, k)
			}
			n += k
		}
		if n != total || len(got) != total {
			t.Fatalf("max %d: %d owners in chunks (%d distinct), want %d", max, n, len(got), total)
		}
		if want := (total + max - 1) / max; len(chunks) != want {
			t.Fatalf("max %d: %d chunks, want %d", max, len(chunks), want)
		}
	}
}
