package main

import (
	"os/exec"
	"syscall"
)

// setParentDeathSignal has the kernel SIGKILL cmd's process when this
// process dies, so that a redis-server the bench started never outlives it
// (even if the bench is killed before it can stop it).
func setParentDeathSignal(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
