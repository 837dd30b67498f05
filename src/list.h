/* list.h: intrusive circular doubly-linked lists: a list_node inside each element, a list_node as the list's head. */
#ifndef TOKEND_LIST_H
#define TOKEND_LIST_H

#include <stddef.h>

typedef struct list_node {
    struct list_node *prev, *next;
} list_node;

/* The element of type holding node n in its member. */
#define list_entry(n, type, member) ((type *)(void *)((char *)(n)-offsetof(type, member)))

/* Makes head an empty list (or n an unlinked node). Every head and node must be
 * initialised, or linked, before any other call. */
static inline void list_init(list_node *head) {
    head->prev = head->next = head;
}

/* 1 when the list is empty (for a node: when it is in no list). */
static inline int list_empty(const list_node *head) {
    return head->next == head;
}

/* Links n, which is in no list, just after pos (a head or a node). */
static inline void list_insert_after(list_node *pos, list_node *n) {
    n->prev = pos;
    n->next = pos->next;
    pos->next->prev = n;
    pos->next = n;
}

/* Links n, which is in no list, just before pos (a head or a node). */
static inline void list_insert_before(list_node *pos, list_node *n) {
    list_insert_after(pos->prev, n);
}

/* Unlinks n from its list, leaving it in none; unlinking a node in no list does nothing. */
static inline void list_remove(list_node *n) {
    n->prev->next = n->next;
    n->next->prev = n->prev;
    list_init(n);
}

/* Links n at the front of head's list, first unlinking it from wherever it is. */
static inline void list_move_front(list_node *head, list_node *n) {
    list_remove(n);
    list_insert_after(head, n);
}

/* The first and last node of head's list, NULL when it is empty. */
static inline list_node *list_first(const list_node *head) {
    return list_empty(head) ? NULL : head->next;
}

static inline list_node *list_last(const list_node *head) {
    return list_empty(head) ? NULL : head->prev;
}

/* The node after and before n in head's list, NULL at its end. */
static inline list_node *list_next(const list_node *head, const list_node *n) {
    return n->next == head ? NULL : n->next;
}

static inline list_node *list_prev(const list_node *head, const list_node *n) {
    return n->prev == head ? NULL : n->prev;
}

#endif
