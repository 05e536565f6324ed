package home

import (
	"bytes"
	"encoding/binary"
	"testing"
	"time"

	pb "github.com/aviarydb/aviary/api/aviarypb"
	"github.com/aviarydb/aviary/ids"
)

// FuzzQueueEntry decodes arbitrary index entries as the fan-out queue's
// posts (decodePost) and the posts table's flags (postFlags), as the
// fan-out reads them back from the data service. decodePost fails exactly
// on a payload of the wrong size; a post it returns re-encodes to the same
// payload, and a post encodes to a payload that decodes to it. Queue
// owners never collide with each other or with user ids.
func FuzzQueueEntry(f *testing.F) {
	p := post{id: 1 << 50, author: 42, flags: 3, accepted: time.Date(2026, 5, 15, 12, 0, 0, 123, time.UTC)}
	f.Add(p.id, p.payload(), uint32(1), uint32(7))
	f.Add(uint64(0), make([]byte, queuePayloadSize), uint32(0), uint32(0))
	f.Add(^uint64(0), bytes.Repeat([]byte{0xff}, queuePayloadSize), uint32(ids.MaxSite), ^uint32(0))
	f.Add(uint64(9), binary.LittleEndian.AppendUint32(nil, 5), uint32(2), uint32(1))
	f.Add(uint64(9), []byte{1, 2, 3}, uint32(3), uint32(2))
	f.Fuzz(func(t *testing.T, id uint64, payload []byte, site, part uint32) {
		in := bytes.Clone(payload)
		got, err := decodePost(&pb.Entry{Id: id, Payload: payload})
		if !bytes.Equal(in, payload) {
			t.Fatal("decodePost modified the payload")
		}
		if (err != nil) != (len(payload) != queuePayloadSize) {
			t.Fatalf("decodePost of a %d-byte payload: %v", len(payload), err)
		}
		if err == nil {
			if got.id != id || !bytes.Equal(got.payload(), payload) {
				t.Fatalf("decodePost(%d, %x) = %+v, which encodes as %x", id, payload, got, got.payload())
			}
			e := got.entry()
			if e.StatusId != id || e.AuthorId != got.author || e.Flags != got.flags {
				t.Fatalf("entry of %+v: %v", got, e)
			}
		}
		// A post as Post writes it decodes to itself.
		if len(payload) >= 12 {
			want := post{id: id, author: binary.LittleEndian.Uint64(payload), flags: binary.LittleEndian.Uint32(payload[8:]),
				accepted: time.Unix(0, int64(binary.LittleEndian.Uint64(append(bytes.Clone(payload[12:]), make([]byte, 8)...))))}
			back, err := decodePost(&pb.Entry{Id: id, Payload: want.payload()})
			if err != nil || back.id != want.id || back.author != want.author || back.flags != want.flags || !back.accepted.Equal(want.accepted) {
				t.Fatalf("post %+v decodes as %+v (%v)", want, back, err)
			}
		}
		// The posts table's payload is the flags, little endian.
		if got, want := postFlags(payload), uint32(0); len(payload) < 4 && got != want {
			t.Fatalf("postFlags(%x) = %d", payload, got)
		} else if len(payload) >= 4 && got != binary.LittleEndian.Uint32(payload) {
			t.Fatalf("postFlags(%x) = %d", payload, got)
		}
		if flags := uint32(id); postFlags(binary.LittleEndian.AppendUint32(nil, flags)) != flags {
			t.Fatalf("postFlags does not read back flags %d", flags)
		}
		// Queue owners: distinct per (site, partition), never a user id.
		s1, s2 := site%(ids.MaxSite+1), (site>>8)%(ids.MaxSite+1)
		p1, p2 := int(part), int(part>>16)
		o1, o2 := QueueOwner(s1, p1), QueueOwner(s2, p2)
		if (o1 == o2) != (s1 == s2 && p1 == p2) {
			t.Fatalf("QueueOwner(%d, %d) = %#x, QueueOwner(%d, %d) = %#x", s1, p1, o1, s2, p2, o2)
		}
		if ids.ID(o1).Validate(time.Now(), time.Hour) == nil {
			t.Fatalf("queue owner %#x is a valid user id", o1)
		}
	})
}
