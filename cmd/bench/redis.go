package main

// The Redis side of the timeline workload: a redis-server started by the
// bench as its child, and home timelines kept in it as Redis lists, pushed
// and read the way a Redis-backed fan-out service does.

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"

	"github.com/aviarydb/aviary/timeline"
)

const (
	// redisStartTimeout bounds how long startRedis waits for a new
	// redis-server to answer PING.
	redisStartTimeout = 10 * time.Second
	// redisPollInterval is how often startRedis tries PING meanwhile.
	redisPollInterval = 20 * time.Millisecond
	// redisStopTimeout is how long stop waits after SIGTERM before SIGKILL.
	redisStopTimeout = 5 * time.Second
)

// startRedis starts a redis-server as a child of this process, listening
// on a free port of 127.0.0.1, with persistence off (no RDB snapshots, no
// AOF) and its working directory and log (redis-server.log) in dir. If
// redis-server is not on PATH it is installed first with apt-get install
// (through sudo when not root). It returns once the server answers PING,
// or fails after redisStartTimeout.
//
// stop stops the server: SIGTERM, then SIGKILL if it has not exited after
// redisStopTimeout; it returns once the process has exited, and may be
// called more than once. The server is also stopped (the same way) when
// ctx is done, and on Linux killed if this process dies without stopping
// it.
func startRedis(ctx context.Context, dir string, logf func(format string, args ...any)) (addr string, stop func(), err error) {
	bin, err := redisServerBinary(ctx, logf)
	if err != nil {
		return "", nil, err
	}
	port, err := redisFreePort()
	if err != nil {
		return "", nil, err
	}
	addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	logPath := filepath.Join(dir, "redis-server.log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return "", nil, fmt.Errorf("redis: open log: %w", err)
	}
	defer logFile.Close() // the child has its own descriptor

	cmd := exec.CommandContext(ctx, bin,
		"--port", strconv.Itoa(port),
		"--bind", "127.0.0.1",
		"--save", "",
		"--appendonly", "no",
		"--dir", dir,
		"--protected-mode", "yes",
		"--daemonize", "no",
	)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// When ctx is done, stop the server as stop does: SIGTERM, then (after
	// WaitDelay) SIGKILL.
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = redisStopTimeout
	setParentDeathSignal(cmd)
	if err := cmd.Start(); err != nil {
		return "", nil, fmt.Errorf("redis: start %s: %w", bin, err)
	}
	// One goroutine waits for the process (so it never lingers as a zombie);
	// done is closed when it has exited.
	done := make(chan struct{})
	var waitErr error
	go func() {
		waitErr = cmd.Wait()
		close(done)
	}()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-done:
				return
			case <-time.After(redisStopTimeout):
			}
			logf("redis-server pid %d did not exit %s after SIGTERM: killing it", cmd.Process.Pid, redisStopTimeout)
			_ = cmd.Process.Kill()
			<-done
		})
	}

	// Wait until it answers PING, it exits, or the deadline passes.
	deadline := time.Now().Add(redisStartTimeout)
	tick := time.NewTicker(redisPollInterval)
	defer tick.Stop()
	for {
		perr := redisPing(addr)
		if perr == nil {
			logf("redis-server pid %d listening on %s (log %s)", cmd.Process.Pid, addr, logPath)
			return addr, stop, nil
		}
		if time.Now().After(deadline) {
			stop()
			return "", nil, fmt.Errorf("redis: %s did not answer PING within %s: %v (log %s:\n%s)",
				addr, redisStartTimeout, perr, logPath, redisLogTail(logPath))
		}
		select {
		case <-done:
			return "", nil, fmt.Errorf("redis: redis-server exited before answering PING: %v (log %s:\n%s)",
				waitErr, logPath, redisLogTail(logPath))
		case <-ctx.Done():
			stop()
			return "", nil, fmt.Errorf("redis: waiting for redis-server: %w", ctx.Err())
		case <-tick.C:
		}
	}
}

// redisServerBinary returns the path of redis-server, installing it with
// apt-get (Debian's redis-server package) if it is not on PATH.
func redisServerBinary(ctx context.Context, logf func(format string, args ...any)) (string, error) {
	if bin, err := exec.LookPath("redis-server"); err == nil {
		return bin, nil
	}
	args := []string{"apt-get", "install", "-y", "redis-server"}
	if os.Geteuid() != 0 {
		args = append([]string{"sudo"}, args...)
	}
	logf("redis-server is not on PATH: installing it (%s)", strings.Join(args, " "))
	install := exec.CommandContext(ctx, args[0], args[1:]...)
	install.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	out, err := install.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("redis: redis-server is not on PATH and %q failed: %v\n%s\n"+
			"(install redis-server yourself, e.g. after apt-get update)", strings.Join(args, " "), err, redisTail(string(out), 2000))
	}
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return "", fmt.Errorf("redis: %q succeeded but redis-server is still not on PATH: %w", strings.Join(args, " "), err)
	}
	return bin, nil
}

// redisFreePort returns a TCP port of 127.0.0.1 that was free a moment ago.
func redisFreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("redis: find a free port: %w", err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	if err := l.Close(); err != nil {
		return 0, fmt.Errorf("redis: find a free port: %w", err)
	}
	return port, nil
}

// redisPing sends one PING to addr on a new connection and checks for PONG.
func redisPing(addr string) error {
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(time.Second)); err != nil {
		return err
	}
	if _, err := conn.Write([]byte("*1\r\n$4\r\nPING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return err
	}
	if line != "+PONG\r\n" {
		// For instance "-LOADING ...": up but not ready yet.
		return fmt.Errorf("PING answered %q", strings.TrimSpace(line))
	}
	return nil
}

// redisLogTail returns the end of the file at path, for an error message.
func redisLogTail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	return redisTail(string(b), 2000)
}

// redisTail returns the last n bytes of s.
func redisTail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// redisTimelines keeps home timelines in Redis: owner O's timeline is the
// list tl:O, newest entry first, each element an encoded entry
// (encodeEntry), trimmed to a capacity on every push. It is safe for
// concurrent use.
type redisTimelines struct {
	c *redis.Client
}

// newRedisTimelines returns a client of the Redis server at addr that uses
// at most poolSize connections, pipelines included (go-redis otherwise
// runs pipelines over a pool of its own).
func newRedisTimelines(addr string, poolSize int) *redisTimelines {
	return &redisTimelines{c: redis.NewClient(&redis.Options{
		Addr:             addr,
		PoolSize:         poolSize,
		MaxActiveConns:   poolSize,
		PipelinePoolSize: -1, // pipelines share the PoolSize connections
		// Honour ctx deadlines and cancellation on the socket too.
		ContextTimeoutEnabled: true,
		// No extra commands on connect that a plain local redis-server
		// (7.0 in Debian 12) would refuse: CLIENT SETINFO, CLIENT
		// MAINT_NOTIFICATIONS.
		DisableIdentity:          true,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
	})}
}

// timelineKey returns the key of owner's timeline list.
func timelineKey(owner uint64) string {
	return "tl:" + strconv.FormatUint(owner, 10)
}

// push adds entry at the head of every owner's timeline and trims each to
// its newest capacity entries, in one pipeline (one round trip): for every
// owner LPUSH then LTRIM. This is how a Redis-backed fan-out worker
// delivers one status to many home timelines.
func (r *redisTimelines) push(ctx context.Context, entry [timeline.EntrySize]byte, owners []uint64, capacity int) error {
	if capacity < 1 {
		return fmt.Errorf("redis push: capacity %d: must be at least 1", capacity)
	}
	if len(owners) == 0 {
		return nil
	}
	pipe := r.c.Pipeline()
	for _, o := range owners {
		key := timelineKey(o)
		pipe.LPush(ctx, key, entry[:])
		pipe.LTrim(ctx, key, 0, int64(capacity-1))
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("redis push: %w", err)
	}
	return nil
}

// read reads the newest limit entries of owner's timeline (LRANGE) and
// returns how many there were.
func (r *redisTimelines) read(ctx context.Context, owner uint64, limit int) (n int, err error) {
	if limit < 1 {
		return 0, fmt.Errorf("redis read: limit %d: must be at least 1", limit)
	}
	entries, err := r.c.LRange(ctx, timelineKey(owner), 0, int64(limit-1)).Result()
	if err != nil {
		return 0, fmt.Errorf("redis read: %w", err)
	}
	return len(entries), nil
}

// readMany reads the newest limit entries of every owner's timeline in one
// pipeline (one LRANGE per owner, one round trip) and returns how many
// entries there were in all.
func (r *redisTimelines) readMany(ctx context.Context, owners []uint64, limit int) (n int, err error) {
	if limit < 1 {
		return 0, fmt.Errorf("redis readMany: limit %d: must be at least 1", limit)
	}
	if len(owners) == 0 {
		return 0, nil
	}
	pipe := r.c.Pipeline()
	cmds := make([]*redis.StringSliceCmd, len(owners))
	for i, o := range owners {
		cmds[i] = pipe.LRange(ctx, timelineKey(o), 0, int64(limit-1))
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return 0, fmt.Errorf("redis readMany: %w", err)
	}
	for _, c := range cmds {
		n += len(c.Val())
	}
	return n, nil
}

// flush deletes every key of the server (FLUSHALL).
func (r *redisTimelines) flush(ctx context.Context) error {
	if err := r.c.FlushAll(ctx).Err(); err != nil {
		return fmt.Errorf("redis flush: %w", err)
	}
	return nil
}

// close closes the client's connections.
func (r *redisTimelines) close() error {
	if err := r.c.Close(); err != nil && !errors.Is(err, redis.ErrClosed) {
		return err
	}
	return nil
}

// encodeEntry returns a timeline entry as the Redis lists hold it: the
// layout timeline.Entry has in a timeline, timeline.EntrySize (20) bytes
// little endian: 8 of status id, 8 of author id, 4 of flags.
func encodeEntry(statusID, authorID uint64, flags uint32) [timeline.EntrySize]byte {
	var b [timeline.EntrySize]byte
	binary.LittleEndian.PutUint64(b[0:8], statusID)
	binary.LittleEndian.PutUint64(b[8:16], authorID)
	binary.LittleEndian.PutUint32(b[16:20], flags)
	return b
}
