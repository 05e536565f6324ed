// Package testnet gives tests addresses on 127.0.0.1 that a process they
// start can bind, and bind again after it was killed.
//
// A ":0" listener gets a port in the kernel's ephemeral range, the range
// every outgoing connection of every process on the machine also takes its
// port from. A test that closes such a listener and hands its port to a
// node has lost it the moment any connection anywhere picks it, and a node
// restarted after kill -9 finds it taken. So the ports here are drawn at
// random below that range, where nothing takes ports unasked.
package testnet

import (
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
)

// low is the first port drawn from.
const low = 20000

// Addr returns 127.0.0.1:port for a port that is free now, drawn at random
// below the ephemeral range.
func Addr(t testing.TB) string {
	t.Helper()
	port := Ports(t, 1, func(base int) []int { return []int{base} })
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
}

// Ports returns a base port, below the ephemeral range by at least span,
// for which every port of ports(base) is free now.
func Ports(t testing.TB, span int, ports func(base int) []int) int {
	t.Helper()
	hi := EphemeralLow() - span
	if hi <= low {
		t.Fatalf("no room for %d ports between %d and the ephemeral range", span, low)
	}
	for range 100 {
		base := low + rand.IntN(hi-low)
		if free(ports(base)) {
			return base
		}
	}
	t.Fatal("no free range of ports found")
	return 0
}

func free(ports []int) bool {
	for _, p := range ports {
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			return false
		}
		_ = l.Close()
	}
	return true
}

// EphemeralLow is the first port of the kernel's ephemeral range (Linux's
// ip_local_port_range; 32768, Linux's default, elsewhere).
func EphemeralLow() int {
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil {
				return n
			}
		}
	}
	return 32768
}
