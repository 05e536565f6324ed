//go:build !unix

package ops

import "errors"

// errNoDev is returned by the dev commands where processes cannot be
// started in a process group of their own.
var errNoDev = errors.New("ops: dev sites run on unix systems only")

func startProcess(string, []string, string) (int, error) { return 0, errNoDev }

func processAlive(int) bool { return false }

func terminate(int) error { return errNoDev }

func kill(int) error { return errNoDev }

func freeBytes(string) (uint64, error) { return 0, errNoDev }
