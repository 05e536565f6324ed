package nameserver

import (
	"context"
	"net"
	"time"

	"github.com/aviarydb/aviary/internal/netx"
	"github.com/hashicorp/raft"
)

// streamLayer carries raft's RPCs over a listener and dialer made by netx,
// so raft's links get transport security where every other link does.
type streamLayer struct {
	net.Listener
}

var _ raft.StreamLayer = streamLayer{}

func (s streamLayer) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return netx.DialTCP(ctx, string(addr))
}
