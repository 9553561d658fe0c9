//! Rewriting the stamp and version vector of a row this transaction has just inserted
//! (see `capture::capture`: a replicated delete of the key committed while the insert
//! waited at the unique index).
//!
//! Not an UPDATE statement: that would fire triggers, and its unique checks would wait
//! for other sessions' speculative inserts of the same key -- which wait for us: a
//! deadlock that PostgreSQL then breaks by failing one writer. Only mmr's columns
//! change, so the key is the one our insert already proved unique: the new version gets
//! its index entries without a uniqueness check, as the heap's own update does for
//! HOT updates (where no entry is needed at all).

use pgrx::pg_sys;

/// Replaces the row version `old` (inserted by this transaction) of `rel` with one whose
/// attributes `cols` hold `values`, maintaining every index.
///
/// # Safety
/// `rel` must be open with a row-exclusive lock and `old` a tuple of it inserted by the
/// current transaction and not updated since.
pub unsafe fn rewrite(rel: pg_sys::Relation, old: pg_sys::HeapTuple, cols: &mut [i32], values: &mut [pg_sys::Datum]) {
    // SAFETY: guaranteed by the caller; every executor object made here is freed here.
    unsafe {
        let mut nulls = vec![false; cols.len()];
        let new = pg_sys::heap_modify_tuple_by_cols(
            old,
            (*rel).rd_att,
            cols.len() as i32,
            cols.as_mut_ptr(),
            values.as_mut_ptr(),
            nulls.as_mut_ptr(),
        );
        // Our insert belongs to the current command; a later one may update it.
        pg_sys::CommandCounterIncrement();
        let mut otid = (*old).t_self;
        pg_sys::simple_heap_update(rel, &mut otid, new);
        if (*(*new).t_data).t_infomask2 as u32 & pg_sys::HEAP_ONLY_TUPLE != 0 {
            return;
        }
        insert_index_entries(rel, new);
    }
}

/// Index entries for the new version `tuple`, without uniqueness checks.
///
/// # Safety
/// As for [`rewrite`]; `tuple` was just written to `rel`.
unsafe fn insert_index_entries(rel: pg_sys::Relation, tuple: pg_sys::HeapTuple) {
    // SAFETY: the executor sequence of ExecInsertIndexTuples, with UNIQUE_CHECK_NO.
    unsafe {
        let rri = pg_sys::palloc0(std::mem::size_of::<pg_sys::ResultRelInfo>()) as *mut pg_sys::ResultRelInfo;
        pg_sys::InitResultRelInfo(rri, rel, 1, std::ptr::null_mut(), 0);
        pg_sys::ExecOpenIndices(rri, false);
        let estate = pg_sys::CreateExecutorState();
        let econtext = pg_sys::MakePerTupleExprContext(estate);
        let slot = pg_sys::MakeSingleTupleTableSlot((*rel).rd_att, &pg_sys::TTSOpsHeapTuple);
        pg_sys::ExecStoreHeapTuple(tuple, slot, false);
        (*econtext).ecxt_scantuple = slot;
        let mut values = [pg_sys::Datum::from(0); pg_sys::INDEX_MAX_KEYS as usize];
        let mut isnull = [false; pg_sys::INDEX_MAX_KEYS as usize];
        for i in 0..(*rri).ri_NumIndices as usize {
            let index = *(*rri).ri_IndexRelationDescs.add(i);
            let info = *(*rri).ri_IndexRelationInfo.add(i);
            if index.is_null() || !(*info).ii_ReadyForInserts {
                continue;
            }
            if !(*info).ii_Predicate.is_null() && !qual(pg_sys::ExecPrepareQual((*info).ii_Predicate, estate), econtext)
            {
                continue;
            }
            pg_sys::FormIndexDatum(info, slot, estate, values.as_mut_ptr(), isnull.as_mut_ptr());
            pg_sys::index_insert(
                index,
                values.as_mut_ptr(),
                isnull.as_mut_ptr(),
                &mut (*tuple).t_self,
                rel,
                pg_sys::IndexUniqueCheck::UNIQUE_CHECK_NO,
                true,
                info,
            );
        }
        pg_sys::ExecDropSingleTupleTableSlot(slot);
        pg_sys::ExecCloseIndices(rri);
        pg_sys::FreeExecutorState(estate);
    }
}

/// `ExecQual` (an inline function in PostgreSQL): true only for a non-null true.
///
/// # Safety
/// `state` must be a prepared qual and `econtext` its expression context.
unsafe fn qual(state: *mut pg_sys::ExprState, econtext: *mut pg_sys::ExprContext) -> bool {
    if state.is_null() {
        return true;
    }
    // SAFETY: guaranteed by the caller; evaluates in the per-tuple memory context.
    unsafe {
        let old = pg_sys::MemoryContextSwitchTo((*econtext).ecxt_per_tuple_memory);
        let mut isnull = false;
        let d = (*state).evalfunc.map(|eval| eval(state, econtext, &mut isnull));
        pg_sys::MemoryContextSwitchTo(old);
        d.is_some_and(|d| !isnull && d.value() != 0)
    }
}
