//go:build !linux

package main

import "os/exec"

// setParentDeathSignal does nothing here: only Linux can have a child
// killed when its parent dies. The child is still stopped when the bench's
// context is done.
func setParentDeathSignal(cmd *exec.Cmd) {}
