//go:build unix

package ops

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"syscall"
)

// startProcess starts bin with args in the background, in a process group
// of its own (so that it outlives this process and a terminal's Ctrl-C),
// with stdin from /dev/null and stdout and stderr appended to logPath. It
// returns the pid.
func startProcess(bin string, args []string, logPath string) (int, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return 0, fmt.Errorf("ops: open log: %w", err)
	}
	defer logf.Close() // the child has its own descriptor
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("ops: start %s: %w", bin, err)
	}
	pid := cmd.Process.Pid
	// Not waited for: the process is meant to outlive this one. processAlive
	// reaps it if it exits while this process is still its parent.
	_ = cmd.Process.Release()
	return pid, nil
}

// processAlive reports whether pid is a running process. It reaps pid if
// it is an exited child of this process, so that it does not linger as a
// zombie.
func processAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	var ws syscall.WaitStatus
	if got, err := syscall.Wait4(pid, &ws, syscall.WNOHANG, nil); err == nil && got == pid {
		return false
	}
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// terminate asks pid to shut down gracefully (SIGTERM).
func terminate(pid int) error { return signalPID(pid, syscall.SIGTERM) }

// kill stops pid at once (SIGKILL).
func kill(pid int) error { return signalPID(pid, syscall.SIGKILL) }

func signalPID(pid int, sig syscall.Signal) error {
	if err := syscall.Kill(pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("ops: signal %s to pid %d: %w", sig, pid, err)
	}
	return nil
}

// freeBytes returns the bytes available to this user on the file system
// of path.
func freeBytes(path string) (uint64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(path, &st); err != nil {
		return 0, fmt.Errorf("ops: statfs %s: %w", path, err)
	}
	return st.Bavail * uint64(st.Bsize), nil
}
