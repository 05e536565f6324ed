//go:build !unix

package main

import "time"

// selfCPU is the CPU time this process has used: unknown (0) here.
func selfCPU() time.Duration { return 0 }
