// Package envflag lets environment variables set command-line flags: a
// bound flag --data-dir with prefix AVIARY_ is also AVIARY_DATA_DIR. A flag
// given on the command line wins over its variable.
package envflag

import (
	"fmt"
	"os"
	"strings"

	"github.com/spf13/pflag"
)

// annotation marks a bound flag; its value is the variable's name.
const annotation = "envflag"

// Name is the variable of flag under prefix.
func Name(prefix, flag string) string {
	return prefix + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// Bind lets variables named prefix+FLAG set the flags of fs (the named
// ones, or all if none are named), and shows each variable in its flag's
// usage. It panics on a name fs does not define (a programming error).
func Bind(fs *pflag.FlagSet, prefix string, names ...string) {
	bind := func(fl *pflag.Flag) {
		v := Name(prefix, fl.Name)
		_ = fs.SetAnnotation(fl.Name, annotation, []string{v})
		fl.Usage += fmt.Sprintf(" [%s]", v)
	}
	if len(names) == 0 {
		fs.VisitAll(bind)
		return
	}
	for _, n := range names {
		fl := fs.Lookup(n)
		if fl == nil {
			panic("envflag: no flag " + n)
		}
		bind(fl)
	}
}

// Apply sets every bound flag that was not given on the command line from
// its variable, if that is set. A list flag takes the variable's
// comma-separated values in place of its default.
func Apply(fs *pflag.FlagSet) error {
	var err error
	fs.VisitAll(func(fl *pflag.Flag) {
		names := fl.Annotations[annotation]
		if err != nil || fl.Changed || len(names) == 0 {
			return
		}
		v, ok := os.LookupEnv(names[0])
		if !ok {
			return
		}
		var e error
		if sv, isSlice := fl.Value.(pflag.SliceValue); isSlice {
			e = sv.Replace(strings.Split(v, ","))
		} else {
			e = fl.Value.Set(v)
		}
		if e != nil {
			err = fmt.Errorf("%s=%q: %w", names[0], v, e)
		}
	})
	return err
}
