# bash completion for psci-hook. The words come from the installed command itself
# (`psci-hook completion words [COMMAND]`), so they follow its version.
_psci_hook() {
    local cur command i words
    cur="${COMP_WORDS[COMP_CWORD]}"
    command=""
    for ((i = 1; i < COMP_CWORD; i++)); do
        case "${COMP_WORDS[i]}" in
            -*) ;;
            *) command="${COMP_WORDS[i]}"; break ;;
        esac
    done
    if [[ -z "$command" && "$cur" != -* ]]; then
        words=$(psci-hook completion words 2>/dev/null)
    elif [[ "$cur" == -* ]]; then
        words=$(psci-hook completion words $command 2>/dev/null)
    else
        COMPREPLY=($(compgen -f -- "$cur"))
        return 0
    fi
    COMPREPLY=($(compgen -W "$words" -- "$cur"))
}
complete -o default -F _psci_hook psci-hook
